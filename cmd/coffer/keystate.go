package main

import (
	"context"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

// keyStateCmd is one life-cycle command (`key activate`, `deactivate`,
// `compromise`, `destroy`): it moves GKID to state and prints the key's
// metadata.
func (a *app) keyStateCmd(name string, state cofferv1.KeyState, short, long string) *cobra.Command {
	var reason string
	var destroyEscrow bool
	cmd := &cobra.Command{
		Use:   name + " GKID [--reason TEXT]",
		Short: short,
		Long:  long,
		Args:  exactArgs(1, "GKID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &cofferv1.SetKeyStateRequest{Gkid: args[0], State: state, Reason: reason, DestroyEscrow: destroyEscrow}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.SetKeyState(ctx, req)
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp.GetKey())
				}
				return writeMetadataText(a.out, resp.GetKey())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&reason, "reason", "", "why, recorded in the audit entry (at most 256 characters)")
	if state == cofferv1.KeyState_KEY_STATE_DESTROYED {
		f.BoolVar(&destroyEscrow, "destroy-escrow", false, "destroy the key's escrow copies too (required for a key that has them)")
	}
	return cmd
}

func (a *app) keyLifecycleCmds() []*cobra.Command {
	return []*cobra.Command{
		a.keyStateCmd("activate", cofferv1.KeyState_KEY_STATE_ACTIVE, "Activate a pre-active key",
			`Activate a pre-active key before its activation time. Needs the state grant
on the key's resource.`),
		a.keyStateCmd("deactivate", cofferv1.KeyState_KEY_STATE_DEACTIVATED, "Retire a key: it only decrypts from now on",
			`Deactivate an active key: from the moment the change is acknowledged, every
node refuses to get it, encrypt or wrap data keys with it, and still
decrypts with it. There is no way back to active. Needs the state grant on
the key's resource.`),
		a.keyStateCmd("compromise", cofferv1.KeyState_KEY_STATE_COMPROMISED, "Mark a key compromised: it only decrypts, and says so",
			`Mark a key compromised: it only decrypts from now on, and every response and
audit entry about it says it is compromised, so that what it protects can be
found and re-encrypted. Needs the state grant on the key's resource.`),
		a.keyStateCmd("destroy", cofferv1.KeyState_KEY_STATE_DESTROYED, "Destroy a key's material on every node",
			`Destroy a key (crypto-shredding): its wrapped material is deleted from the
state of every node, and whatever it encrypted can no longer be decrypted.
Its metadata stays, in state destroyed. A key with escrow copies is
destroyed only with --destroy-escrow, which deletes them too. Older copies
of the wrapped material stay on each node's disk for now (the Raft log file,
the state's files, earlier snapshots; see README, "Key life cycle"). Needs
the destroy grant on the key's resource.`),
	}
}

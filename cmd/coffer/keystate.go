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
				return a.printMetadata(resp.GetKey())
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

// keyRotateCmd is `key rotate`.
func (a *app) keyRotateCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "rotate GKID [--reason TEXT]",
		Short: "Add a new version of a key's material",
		Long: `Rotate an active key: a new version of its material is generated in the
keystore under the same GKID. New encryptions and data keys use it; older
versions still decrypt (and can be fetched with get --version) until they
are retired. Needs the rotate grant on the key's resource. A policy can
rotate its keys automatically (policy create --rotate-every,
--rotate-after-encryptions).`,
		Args: exactArgs(1, "GKID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &cofferv1.RotateKeyRequest{Gkid: args[0], Reason: reason}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.RotateKey(ctx, req)
				if err != nil {
					return err
				}
				return a.printMetadata(resp.GetKey())
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded in the audit entry (at most 256 characters)")
	return cmd
}

// keyRetireCmd is `key retire`.
func (a *app) keyRetireCmd() *cobra.Command {
	var reason string
	var version uint32
	var destroyEscrow bool
	cmd := &cobra.Command{
		Use:   "retire GKID --version N [--reason TEXT] [--destroy-escrow]",
		Short: "Delete an older version of a key's material on every node",
		Long: `Retire an older version of a key: its wrapped material (and, with
--destroy-escrow, its escrow copies) is deleted from the state of every node,
and ciphertexts under that version no longer decrypt. The newest version is
never retired: rotate first, or destroy the key. Needs the destroy grant on
the key's resource.`,
		Args: exactArgs(1, "GKID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if version == 0 {
				return usagef("--version is required")
			}
			req := &cofferv1.RetireKeyVersionRequest{Gkid: args[0], Version: version, Reason: reason, DestroyEscrow: destroyEscrow}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.RetireKeyVersion(ctx, req)
				if err != nil {
					return err
				}
				return a.printMetadata(resp.GetKey())
			})
		},
	}
	f := cmd.Flags()
	f.Uint32Var(&version, "version", 0, "the version to retire (required)")
	f.StringVar(&reason, "reason", "", "why, recorded in the audit entry (at most 256 characters)")
	f.BoolVar(&destroyEscrow, "destroy-escrow", false, "destroy the version's escrow copies too (required for a version that has them)")
	return cmd
}

// keyAmendUseCmd is `key amend-use`.
func (a *app) keyAmendUseCmd() *cobra.Command {
	var reason string
	var uf useFlags
	cmd := &cobra.Command{
		Use:   "amend-use GKID [--ops OPS] [--not-before T] [--not-after T] [--max-encryptions N] [--rotate-every D] [--rotate-after-encryptions N]",
		Short: "Replace one existing key's use policy",
		Long: `Replace the use policy of one existing key (policy update changes only the
keys created afterwards). The flags given together make the whole new use
policy; with none of them the key's use policy is cleared (no restriction).
Every node enforces the new policy for every request that arrives after the
change is acknowledged, and the audit entry lists what changed. Needs
policy.update (the security-officer role).`,
		Args: exactArgs(1, "GKID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			use, err := uf.buildUse(cmd)
			if err != nil {
				return err
			}
			if use == nil {
				use = &cofferv1.KeyUsePolicy{}
			}
			req := &cofferv1.AmendKeyUsePolicyRequest{Gkid: args[0], UsePolicy: use, Reason: reason}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.AmendKeyUsePolicy(ctx, req)
				if err != nil {
					return err
				}
				return a.printMetadata(resp.GetKey())
			})
		},
	}
	uf.registerUse(cmd.Flags())
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded in the audit entry (at most 256 characters)")
	return cmd
}

// printMetadata writes a key's metadata as text or JSON.
func (a *app) printMetadata(md *cofferv1.KeyMetadata) error {
	if a.format == formatJSON {
		return writeProto(a.out, md)
	}
	return writeMetadataText(a.out, md)
}

func (a *app) keyLifecycleCmds() []*cobra.Command {
	return []*cobra.Command{
		a.keyRotateCmd(), a.keyRetireCmd(), a.keyAmendUseCmd(),
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
destroyed only with --destroy-escrow, which deletes them too, unless its
policy has an escrow retention, which keeps them for a stated time. Each
node then removes the older copies from its state files and snapshots; the
Raft log keeps them until it is compacted and the node restarts (README,
"Key life cycle", says what remains where). Needs the destroy grant on the
key's resource.`),
	}
}

// Command cofferd is the Coffer server.
//
//	cofferd serve --config FILE     run one node from a JSON config file
//	cofferd dev --nodes 3 --dir DIR start a local cluster, one process a node
//	cofferd recover --config FILE   rewrite a survivor's voters after a majority loss
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "cofferd",
		Short:         "Coffer key custody server",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCmd(), devCmd(), keystoreCmd(), recoverCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "cofferd:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ error }

package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/coffer-kms/coffer/node"
)

func serveCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "serve --config FILE",
		Short: "Run one cluster node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath == "" {
				return usageError{fmt.Errorf("--config is required")}
			}
			return serve(configPath)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "node config file (JSON)")
	return cmd
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func serve(configPath string) error {
	cfg, err := loadConfig(configPath)
	if err != nil {
		return err
	}
	logger := newLogger(cfg.LogLevel)
	ks, err := openKeystore(cfg.Keystore)
	if err != nil {
		return fmt.Errorf("keystore: %w", err)
	}
	n, err := node.New(cfg.Config, ks, logger)
	if err != nil {
		_ = ks.Close()
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	s := <-sig
	logger.Info("stopping", "signal", s.String())
	return n.Close()
}

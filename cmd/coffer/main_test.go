package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/keyseal"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// envMap is a fake environment.
type envMap map[string]string

func (e envMap) get(k string) string { return e[k] }

// mustApp returns an app whose global flags were parsed from args.
func mustApp(t *testing.T, env envMap, args ...string) *app {
	t.Helper()
	a := &app{getenv: env.get}
	a.rootCmd()
	if err := a.flags.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return a
}

// runCLI runs one command line and returns its exit status and output.
func runCLI(t *testing.T, env envMap, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code = run(ctx, args, streams{in: strings.NewReader(""), out: &out, err: &errOut}, env.get)
	return code, out.String(), errOut.String()
}

func TestSetting_FlagBeatsEnvBeatsDefault(t *testing.T) {
	env := envMap{envAddr: "env-host:1", envCA: "env-ca.pem", envOutput: "json"}
	a := mustApp(t, env, "--addr", "flag-host:1", "--cert", "flag-cert.pem")
	for _, tc := range []struct{ flag, env, want string }{
		{"addr", envAddr, "flag-host:1"},   // flag wins over env
		{"ca", envCA, "env-ca.pem"},        // env fills an unset flag
		{"cert", envCert, "flag-cert.pem"}, // flag alone
		{"key", envKey, ""},                // neither
		{"output", envOutput, "json"},      // env over the flag default
	} {
		if got := a.setting(tc.flag, tc.env); got != tc.want {
			t.Errorf("setting(%s) = %q, want %q", tc.flag, got, tc.want)
		}
	}
	if err := a.resolveCommon(); err != nil || a.format != formatJSON || a.limit != defaultTimeout {
		t.Fatalf("resolveCommon = %v, format %q, timeout %v", err, a.format, a.limit)
	}
}

func TestResolveCommon_Timeout(t *testing.T) {
	a := mustApp(t, envMap{envTimeout: "3s"})
	if err := a.resolveCommon(); err != nil || a.limit != 3*time.Second {
		t.Fatalf("env timeout: %v, %v", err, a.limit)
	}
	a = mustApp(t, envMap{envTimeout: "3s"}, "--timeout", "1m")
	if err := a.resolveCommon(); err != nil || a.limit != time.Minute {
		t.Fatalf("flag timeout: %v, %v", err, a.limit)
	}
	for _, env := range []envMap{{envTimeout: "soon"}, {envTimeout: "-1s"}, {envOutput: "yaml"}, {envSeal: "rsa"}} {
		a = mustApp(t, env)
		var ue usageError
		if err := a.resolveCommon(); !errors.As(err, &ue) {
			t.Errorf("env %v: err = %v, want a usage error", env, err)
		}
	}
}

func TestResolveCommon_Seal(t *testing.T) {
	for _, c := range []struct {
		env   envMap
		args  []string
		kem   uint16
		plain bool
	}{
		{envMap{}, nil, keyseal.KEMX25519, false},
		{envMap{envSeal: "mlkem768x25519"}, nil, keyseal.KEMMLKEM768X25519, false},
		{envMap{envSeal: "mlkem768x25519"}, []string{"--seal", "none"}, 0, true},
	} {
		a := mustApp(t, c.env, c.args...)
		if err := a.resolveCommon(); err != nil || a.sealKEM != c.kem || a.plainKeys != c.plain {
			t.Errorf("%v %v: %v, kem %#x, plain %v", c.env, c.args, err, a.sealKEM, a.plainKeys)
		}
	}
}

func TestResolveConn(t *testing.T) {
	full := envMap{envAddr: "a:1, b:2,,a:1", envCA: "ca", envCert: "cert", envKey: "key"}
	cs, err := mustApp(t, full).resolveConn()
	if err != nil {
		t.Fatalf("resolveConn: %v", err)
	}
	if want := []string{"a:1", "b:2"}; !slices.Equal(cs.addrs, want) {
		t.Errorf("addrs = %v, want %v", cs.addrs, want)
	}
	if cs.tls.CAFile != "ca" || cs.tls.CertFile != "cert" || cs.tls.KeyFile != "key" {
		t.Errorf("tls = %+v", cs.tls)
	}

	for missing, wantMsg := range map[string]string{
		envAddr: "set --addr or COFFER_ADDR",
		envCA:   "set --ca or COFFER_CA",
		envCert: "set --cert or COFFER_CERT",
		envKey:  "set --key or COFFER_KEY",
	} {
		env := envMap{}
		for k, v := range full {
			if k != missing {
				env[k] = v
			}
		}
		_, err := mustApp(t, env).resolveConn()
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), wantMsg) {
			t.Errorf("without %s: err = %v, want a usage error saying %q", missing, err, wantMsg)
		}
	}

	if _, err := mustApp(t, full, "--addr", "nohost").resolveConn(); err == nil {
		t.Error("address without port accepted")
	}
}

func TestRun_ExitCodes(t *testing.T) {
	noEnv := envMap{}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"help", []string{"--help"}, exitOK, ""},
		{"group help", []string{"key"}, exitOK, ""},
		{"unknown command", []string{"nope"}, exitUsage, `coffer: unknown command "nope" for "coffer"`},
		{"unknown subcommand", []string{"key", "nope"}, exitUsage, `unknown command "nope" for "coffer key"`},
		{"unknown flag", []string{"key", "list", "--nope"}, exitUsage, "unknown flag: --nope"},
		{"missing arg", []string{"key", "get"}, exitUsage, "GKID"},
		{"missing resource", []string{"key", "generate"}, exitUsage, "--resource is required"},
		{"bad algorithm", []string{"key", "generate", "--resource", "r", "--algorithm", "des"}, exitUsage, "unknown algorithm"},
		{"missing addr", []string{"cluster", "status"}, exitUsage, "set --addr or COFFER_ADDR"},
		{"bad output", []string{"-o", "xml", "cluster", "status"}, exitUsage, "unknown output format"},
		{"bad bench op", []string{"bench", "--op", "delete"}, exitUsage, "--op"},
		{"bad page size", []string{"key", "list", "--page-size", "5000"}, exitUsage, "--page-size"},
		{"unreadable certs", []string{"--addr", "h:1", "--ca", "/nonexistent/ca", "--cert", "c", "--key", "k", "cluster", "status"},
			exitFailure, "coffer: load TLS credentials"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, noEnv, tc.args...)
			if code != tc.wantCode {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.wantCode, stderr)
			}
			if !strings.Contains(stderr, tc.wantErr) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tc.wantErr)
			}
		})
	}
}

func TestPrintError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{status.Error(codes.NotFound, "no key g1"), "coffer: NotFound: no key g1\n"},
		{fmt.Errorf("wrapped: %w", status.Error(codes.PermissionDenied, "no grant")), "coffer: PermissionDenied: no grant\n"},
		{errors.New("plain"), "coffer: plain\n"},
	} {
		var buf bytes.Buffer
		printError(&buf, tc.err)
		if buf.String() != tc.want {
			t.Errorf("printError(%v) = %q, want %q", tc.err, buf.String(), tc.want)
		}
	}
}

package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/coffer-kms/coffer/node"
)

const (
	sampleFile = "cofferd.json"
	unitFile   = "cofferd.service"
	readmeFile = "README.md"
	// maxConfigBytes is cofferd's own bound on a config file.
	maxConfigBytes = 1 << 20
)

// sampleConfig is what `cofferd serve` decodes (cmd/cofferd/config.go,
// fileConfig): the node settings plus the keystore section, which is
// checked on its own (keystoreSection).
type sampleConfig struct {
	node.Config
	Keystore json.RawMessage `json:"keystore"`
}

// keystoreSection mirrors the JSON names of cofferd's keystoreConfig
// (cmd/cofferd/config.go, package main, so not importable); a name cofferd
// does not know fails the strict decode below as it would in cofferd.
type keystoreSection struct {
	Kind           string `json:"kind"`
	MasterKeyFile  string `json:"master_key_file,omitempty"`
	PassphraseFile string `json:"passphrase_file,omitempty"`
	PassphraseEnv  string `json:"passphrase_env,omitempty"`
	KeyFile        string `json:"key_file,omitempty"`
	Module         string `json:"module,omitempty"`
	TokenLabel     string `json:"token_label,omitempty"`
	Slot           *uint  `json:"slot,omitempty"`
	PINFile        string `json:"pin_file,omitempty"`
	PINEnv         string `json:"pin_env,omitempty"`
	MasterKeyLabel string `json:"master_key_label,omitempty"`
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mustLoadSample decodes the sample as cofferd's loadConfig does: from
// node.DefaultConfig, unknown fields refused, then node.Config.Validate.
func mustLoadSample(t *testing.T) (*sampleConfig, keystoreSection) {
	t.Helper()
	data := mustRead(t, sampleFile)
	if len(data) > maxConfigBytes {
		t.Fatalf("%s is %d bytes; cofferd reads at most %d", sampleFile, len(data), maxConfigBytes)
	}
	cfg := &sampleConfig{Config: node.DefaultConfig()}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		t.Fatalf("parse %s: %v", sampleFile, err)
	}
	if dec.More() {
		t.Fatalf("%s: trailing data after the config object", sampleFile)
	}
	if err := cfg.Config.Validate(); err != nil {
		t.Fatalf("%s: %v", sampleFile, err)
	}
	var ks keystoreSection
	kdec := json.NewDecoder(bytes.NewReader(cfg.Keystore))
	kdec.DisallowUnknownFields()
	if err := kdec.Decode(&ks); err != nil {
		t.Fatalf("%s: keystore: %v", sampleFile, err)
	}
	return cfg, ks
}

func TestSample_LoadsLikeCofferd(t *testing.T) {
	cfg, ks := mustLoadSample(t)
	switch ks.Kind {
	case hsmwrap.KindPKCS11:
		if ks.MasterKeyFile != "" || ks.PassphraseFile != "" || ks.PassphraseEnv != "" || ks.KeyFile != "" {
			t.Fatalf("keystore: software keystore settings beside kind pkcs11: %+v", ks)
		}
		pc := hsmwrap.DefaultPKCS11Config()
		pc.Module, pc.TokenLabel, pc.Slot, pc.PINFile, pc.PINEnv = ks.Module, ks.TokenLabel, ks.Slot, ks.PINFile, ks.PINEnv
		if ks.MasterKeyLabel != "" {
			pc.MasterKeyLabel = ks.MasterKeyLabel
		}
		if err := pc.Validate(); err != nil {
			t.Fatalf("keystore: %v", err)
		}
	case hsmwrap.KindSoftware:
		if ks.Module != "" || ks.TokenLabel != "" || ks.Slot != nil || ks.PINFile != "" || ks.PINEnv != "" || ks.MasterKeyLabel != "" {
			t.Fatalf("keystore: pkcs11 settings beside kind software: %+v", ks)
		}
		sc := hsmwrap.SoftwareConfig{MasterKeyFile: ks.MasterKeyFile, PassphraseFile: ks.PassphraseFile, PassphraseEnv: ks.PassphraseEnv, KeyFile: ks.KeyFile}
		if err := sc.Validate(); err != nil {
			t.Fatalf("keystore: %v", err)
		}
	default:
		t.Fatalf("keystore kind %q: the sample names a keystore explicitly, pkcs11 or software", ks.Kind)
	}
	if cfg.ID != "n1" || cfg.Site != "a" {
		t.Fatalf("the sample is node n1 of site a, got %s of site %s", cfg.ID, cfg.Site)
	}
}

// The sample must be a production config: nothing from `cofferd dev`.
func TestSample_IsProduction(t *testing.T) {
	cfg, ks := mustLoadSample(t)
	if cfg.Pprof {
		t.Error("pprof is on; a production node serves no profiler")
	}
	if ks.KeyFile != "" || ks.PassphraseEnv != "" {
		t.Errorf("keystore: a key file or a passphrase in the environment; production uses an HSM PIN file or a passphrase file")
	}
	if ks.Kind == hsmwrap.KindPKCS11 && ks.PINFile == "" {
		t.Errorf("keystore: the HSM PIN comes from pin_file, not from the environment")
	}
	var generic any
	if err := json.Unmarshal(mustRead(t, sampleFile), &generic); err != nil {
		t.Fatal(err)
	}
	walkStrings(generic, "", func(path, s string) {
		if strings.Contains(strings.ToLower(s), "dev") {
			t.Errorf("%s = %q: development files and names do not belong in the production sample", path, s)
		}
	})

	mhost, _, err := net.SplitHostPort(cfg.MetricsAddr)
	if err != nil {
		t.Fatalf("metrics_addr %q: %v", cfg.MetricsAddr, err)
	}
	ahost, _, _ := net.SplitHostPort(cfg.APIAddr)
	if ip := net.ParseIP(mhost); ip == nil || ip.IsUnspecified() || mhost == ahost {
		t.Errorf("metrics_addr %q: bind metrics to this node's management address (not the API's %s, not every interface)", cfg.MetricsAddr, ahost)
	}
	if cfg.Raft.Profile != node.ProfileWAN {
		t.Errorf("raft.profile %q: a multi-datacentre cluster uses %q", cfg.Raft.Profile, node.ProfileWAN)
	}
	// Fields beside the profile override it: the sample spells out the WAN
	// timings, so they must still be the WAN timings.
	wan := node.WANRaftTimings()
	if cfg.Raft != wan {
		t.Errorf("raft: %+v differs from the WAN profile %+v; explain any change in README.md", cfg.Raft, wan)
	}
	if !cfg.Gossip.WAN {
		t.Error("gossip.wan is off; sites in distinct data centres use memberlist's WAN timings")
	}
	if cfg.Membership.Voters != 5 {
		t.Errorf("membership.voters = %d, want 5 (2+2+1 over three sites)", cfg.Membership.Voters)
	}
	if !strings.HasPrefix(cfg.Gossip.KeyFile, "/etc/coffer/") {
		t.Errorf("gossip.key_file %q: keep the gossip key under /etc/coffer", cfg.Gossip.KeyFile)
	}
	for name, p := range map[string]string{"tls.ca_file": cfg.TLS.CAFile, "tls.client_ca_file": cfg.TLS.ClientCAFile,
		"tls.cert_file": cfg.TLS.CertFile, "tls.key_file": cfg.TLS.KeyFile, "keystore.pin_file": ks.PINFile} {
		if p != "" && !strings.HasPrefix(p, "/etc/coffer/") {
			t.Errorf("%s %q: configuration secrets live under /etc/coffer (read-only to the service)", name, p)
		}
	}
	if !strings.HasPrefix(cfg.DataDir, "/var/lib/coffer/") {
		t.Errorf("data_dir %q: the unit lets the node write only under /var/lib/coffer", cfg.DataDir)
	}
	sites := map[string]bool{}
	for _, p := range cfg.Peers {
		sites[p.Site] = true
	}
	if !cfg.Bootstrap || len(cfg.Peers) != 3 || len(sites) != 3 {
		t.Errorf("the sample bootstraps from the first node of each of three sites; got bootstrap=%v peers=%+v", cfg.Bootstrap, cfg.Peers)
	}
}

// Every setting of node.Config and of the keystore section is written out
// in the sample and explained in README.md.
func TestSample_EverySettingPresentAndExplained(t *testing.T) {
	var generic map[string]any
	if err := json.Unmarshal(mustRead(t, sampleFile), &generic); err != nil {
		t.Fatal(err)
	}
	readme := string(mustRead(t, readmeFile))
	paths := settingPaths(reflect.TypeFor[node.Config](), "")
	for _, p := range paths {
		if err := present(generic, p); err != nil {
			t.Errorf("%s: %v", sampleFile, err)
		}
	}
	paths = append(paths, "keystore")
	ks, _ := generic["keystore"].(map[string]any)
	for k := range ks {
		paths = append(paths, "keystore."+k)
	}
	slices.Sort(paths)
	for _, p := range paths {
		if !strings.Contains(readme, "`"+p+"`") {
			t.Errorf("%s does not explain `%s`", readmeFile, p)
		}
	}
}

// settingPaths lists the JSON path of every field of struct type typ:
// "raft.heartbeat_timeout", "peers[].id". Embedded structs without a name
// are flattened, as encoding/json does.
func settingPaths(typ reflect.Type, prefix string) []string {
	var out []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			out = append(out, settingPaths(f.Type, prefix)...)
			continue
		}
		if name == "" {
			name = f.Name
		}
		p := prefix + name
		out = append(out, p)
		switch {
		case f.Type.Kind() == reflect.Struct:
			out = append(out, settingPaths(f.Type, p+".")...)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
			out = append(out, settingPaths(f.Type.Elem(), p+"[].")...)
		}
	}
	return out
}

// present reports whether path is set in v; "a[].b" needs a non-empty list
// a whose every element has b.
func present(v any, path string) error {
	head, rest, _ := strings.Cut(path, ".")
	name, list := strings.CutSuffix(head, "[]")
	m, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("%s: not an object", path)
	}
	child, ok := m[name]
	if !ok {
		return fmt.Errorf("setting %q is missing", name)
	}
	if !list {
		if rest == "" {
			return nil
		}
		return present(child, rest)
	}
	items, ok := child.([]any)
	if !ok || len(items) == 0 {
		return fmt.Errorf("%s: want a non-empty list", name)
	}
	for i, it := range items {
		if rest == "" {
			continue
		}
		if err := present(it, rest); err != nil {
			return fmt.Errorf("%s[%d]: %w", name, i, err)
		}
	}
	return nil
}

func walkStrings(v any, path string, f func(path, s string)) {
	switch x := v.(type) {
	case string:
		f(path, x)
	case []any:
		for i, e := range x {
			walkStrings(e, fmt.Sprintf("%s[%d]", path, i), f)
		}
	case map[string]any:
		for k, e := range x {
			walkStrings(e, strings.TrimPrefix(path+"."+k, "."), f)
		}
	}
}

// unitSettings reads a systemd unit: every Key=value line, by key.
func unitSettings(t *testing.T, data []byte) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: malformed line %q", unitFile, line)
		}
		out[k] = append(out[k], v)
	}
	return out
}

func TestUnit_Hardened(t *testing.T) {
	cfg, _ := mustLoadSample(t)
	u := unitSettings(t, mustRead(t, unitFile))
	for k, want := range map[string]string{
		"User": "coffer", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
		"ProtectHome": "yes", "Restart": "on-failure", "CapabilityBoundingSet": "",
	} {
		if got, ok := u[k]; !ok || got[len(got)-1] != want {
			t.Errorf("%s: %s=%q, want %q", unitFile, k, got, want)
		}
	}
	for _, k := range []string{"RestartSec", "LimitNOFILE", "ReadWritePaths", "ExecStart"} {
		if len(u[k]) == 0 {
			t.Errorf("%s: %s is not set", unitFile, k)
		}
	}
	writable := false
	for _, v := range u["ReadWritePaths"] {
		for _, p := range strings.Fields(v) {
			writable = writable || strings.HasPrefix(cfg.DataDir+"/", strings.TrimSuffix(p, "/")+"/")
		}
	}
	if !writable {
		t.Errorf("%s: ReadWritePaths %q does not cover data_dir %s", unitFile, u["ReadWritePaths"], cfg.DataDir)
	}
	if exec := strings.Join(u["ExecStart"], " "); !strings.Contains(exec, "serve --config /etc/coffer/cofferd.json") {
		t.Errorf("%s: ExecStart %q does not run serve with /etc/coffer/cofferd.json", unitFile, exec)
	}
}

// systemd-analyze verify checks the unit as systemd would load it (keys,
// sections, values). It is skipped where systemd-analyze is not installed.
func TestUnit_SystemdVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	data := mustRead(t, unitFile)
	// verify insists that ExecStart's binary exists: point it at a stand-in.
	dir := t.TempDir()
	stub := filepath.Join(dir, "cofferd")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte("/usr/local/bin/cofferd")) {
		t.Fatalf("%s: ExecStart does not run /usr/local/bin/cofferd", unitFile)
	}
	unit := filepath.Join(dir, unitFile)
	if err := os.WriteFile(unit, bytes.ReplaceAll(data, []byte("/usr/local/bin/cofferd"), []byte(stub)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, sa, "verify", unit).CombinedOutput()
	// verify exits 0 on unknown keys and bad values, and only warns: any
	// line about this unit is a failure. Lines about other units of the
	// host are not this test's business.
	var ours []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, unitFile) {
			ours = append(ours, line)
		}
	}
	if err != nil || len(ours) > 0 {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", unitFile, err, out)
	}
}

// The Vagrant lab's scripts parse (bash -n).
func TestVagrantScripts_Parse(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not installed")
	}
	scripts, err := filepath.Glob(filepath.Join("vagrant", "*.sh"))
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no scripts in deploy/vagrant: %v", err)
	}
	for _, s := range scripts {
		if out, err := exec.Command(bash, "-n", s).CombinedOutput(); err != nil {
			t.Errorf("bash -n %s: %v\n%s", s, err, out)
		}
		if !bytes.Contains(mustRead(t, s), []byte("set -euo pipefail")) {
			t.Errorf("%s: does not set -euo pipefail", s)
		}
	}
}

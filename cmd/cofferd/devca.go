package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/coffer-kms/coffer/transport"
)

// The dev cluster's PKI: a node CA that signs the nodes' certificates and a
// client CA that signs the admin's (and those `coffer client issue` makes),
// each name-constrained to its kind (transport/DESIGN.md, "Trust model").

const (
	devCAValidity   = 10 * 365 * 24 * time.Hour
	devCertValidity = 5 * 365 * 24 * time.Hour
)

// devCAPaths are the certificate and key of a kind's dev CA.
func devCAPaths(dir string, k transport.Kind) [2]string {
	return [2]string{filepath.Join(dir, "ca", string(k)+"-ca.pem"), filepath.Join(dir, "ca", string(k)+"-ca-key.pem")}
}

// devNodeTLS is node id's TLS configuration in a dev directory.
func devNodeTLS(dir, id string) transport.TLSConfig {
	return transport.TLSConfig{CAFile: devCAPaths(dir, transport.KindNode)[0], ClientCAFile: devCAPaths(dir, transport.KindClient)[0],
		CertFile: filepath.Join(dir, id, "tls", "node.pem"), KeyFile: filepath.Join(dir, id, "tls", "node-key.pem")}
}

// issueFunc writes a key pair for an identity, signed by the CA of its kind.
type issueFunc func(id transport.Identity, certPath, keyPath string) error

// createDevCAs creates DIR/ca with both CAs and returns the issuer of
// certificates valid for o.host (and loopback).
func createDevCAs(o devOptions) (issueFunc, error) {
	if err := os.MkdirAll(filepath.Join(o.dir, "ca"), 0o700); err != nil {
		return nil, err
	}
	cas := map[transport.Kind]*transport.CA{}
	for _, k := range []transport.Kind{transport.KindNode, transport.KindClient} {
		ca, err := transport.CreateCA("Coffer dev CA ("+string(k)+"s)", k, devCAValidity)
		if err != nil {
			return nil, err
		}
		paths := devCAPaths(o.dir, k)
		if err := ca.WriteFiles(paths[0], paths[1]); err != nil {
			return nil, err
		}
		cas[k] = ca
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	if ip := net.ParseIP(o.host); ip != nil && !ip.IsLoopback() && !ip.IsUnspecified() {
		ips = append(ips, ip)
	}
	return func(id transport.Identity, certPath, keyPath string) error {
		req := transport.IssueRequest{Identity: id, Validity: devCertValidity}
		if id.Kind == transport.KindNode {
			req.IPs, req.DNSNames = ips, []string{"localhost"}
		}
		c, k, err := cas[id.Kind].Issue(req)
		if err != nil {
			return err
		}
		return transport.WriteKeyPair(certPath, keyPath, c, k)
	}, nil
}

// devOldCADir is where migrateDevCAs keeps what the single-CA layout had.
const devOldCADir = "single-ca-old"

// migrateDevCAs moves a dev directory made before nodes and clients had
// separate CAs (ca/ca.pem signed both) to the current layout: it sets the
// old CA and every certificate it signed aside in DIR/single-ca-old, creates
// the two CAs, issues the admin and every node a new certificate, and
// rewrites each node config's tls section. Keys, keystore and data are
// untouched; certificates the old CA issued to other clients stop working
// and must be issued again from the client CA.
func migrateDevCAs(lay *devLayout, o devOptions) error {
	old := filepath.Join(o.dir, devOldCADir)
	if _, err := os.Lstat(old); err == nil {
		return fmt.Errorf("%s uses one CA for nodes and clients and %s already exists: move it away and start again, or delete %s to start from nothing", o.dir, old, o.dir)
	}
	fmt.Printf("Migrating %s to separate node and client CAs: a key that signs clients must not be able to mint node identities.\n", o.dir)
	type nodeConf struct {
		path string
		raw  map[string]json.RawMessage
		id   string
	}
	var confs []nodeConf
	for _, c := range lay.configs {
		data, err := os.ReadFile(c)
		if err != nil {
			return err
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(data, &raw); err != nil {
			return fmt.Errorf("parse %s: %w", c, err)
		}
		var id string
		if err := json.Unmarshal(raw["id"], &id); err != nil || id == "" {
			return fmt.Errorf("%s has no node id", c)
		}
		confs = append(confs, nodeConf{path: c, raw: raw, id: id})
	}
	moves := [][2]string{{filepath.Join(o.dir, "ca"), filepath.Join(old, "ca")}, {filepath.Join(o.dir, "client"), filepath.Join(old, "client")}}
	for _, c := range confs {
		moves = append(moves, [2]string{filepath.Join(o.dir, c.id, "tls"), filepath.Join(old, c.id+"-tls")})
	}
	if err := os.MkdirAll(old, 0o700); err != nil {
		return err
	}
	for _, m := range moves {
		if err := os.Rename(m[0], m[1]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("set aside %s: %w", m[0], err)
		}
	}
	issue, err := createDevCAs(o)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(lay.client.CertFile), 0o700); err != nil {
		return err
	}
	if err := issue(transport.Identity{Kind: transport.KindClient, Name: "admin"}, lay.client.CertFile, lay.client.KeyFile); err != nil {
		return err
	}
	for _, c := range confs {
		tlsc := devNodeTLS(o.dir, c.id)
		if err := os.MkdirAll(filepath.Dir(tlsc.CertFile), 0o700); err != nil {
			return err
		}
		if err := issue(transport.Identity{Kind: transport.KindNode, Name: c.id}, tlsc.CertFile, tlsc.KeyFile); err != nil {
			return err
		}
		b, err := json.Marshal(tlsc)
		if err != nil {
			return err
		}
		c.raw["tls"] = b
		if err := durationsAsStrings(c.raw); err != nil {
			return fmt.Errorf("%s: %w", c.path, err)
		}
		data, err := json.MarshalIndent(c.raw, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(c.path, append(data, '\n'), 0o600); err != nil {
			return err
		}
	}
	fmt.Printf("Migrated: node and admin certificates reissued; the old CA and certificates are in %s.\n"+
		"Certificates the old CA issued to other clients no longer work: issue them again with coffer client issue (client CA: %s).\n",
		old, lay.clientCA)
	return nil
}

// durationFields are the sections and fields of a node config that hold
// durations, which configs of the single-CA layout wrote as nanoseconds.
var durationFields = map[string][]string{
	"raft":   {"heartbeat_timeout", "election_timeout", "leader_lease_timeout", "commit_timeout", "snapshot_interval"},
	"limits": {"request_timeout"},
	"audit":  {"checkpoint_interval"},
}

// durationsAsStrings rewrites a config's durations from nanoseconds to
// duration strings ("250ms").
func durationsAsStrings(raw map[string]json.RawMessage) error {
	for section, fields := range durationFields {
		sec, ok := raw[section]
		if !ok {
			continue
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(sec, &m); err != nil {
			return fmt.Errorf("%s: %w", section, err)
		}
		for _, f := range fields {
			var ns int64
			if v, ok := m[f]; ok && json.Unmarshal(v, &ns) == nil {
				m[f], _ = json.Marshal(time.Duration(ns).String())
			}
		}
		b, err := json.Marshal(m)
		if err != nil {
			return err
		}
		raw[section] = b
	}
	return nil
}

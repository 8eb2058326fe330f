// Command rowcrypt encrypts one column of a CSV table row by row with
// Coffer's envelope encryption (client.Seal: a fresh data key per row,
// AES-256-GCM in this process), writes the encrypted table, decrypts it
// back (client.Open), checks that it equals the input, and prints the audit
// entries the run produced.
//
// It connects as the coffer CLI does, from COFFER_ADDR, COFFER_CA,
// COFFER_CERT and COFFER_KEY; with a dev cluster:
//
//	source .coffer-dev/env
//	go run ./examples/rowcrypt
//
// See README.md in this directory.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/transport"
)

//go:embed customers.csv
var sampleCSV []byte

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "rowcrypt:", err)
		os.Exit(1)
	}
}

func run() error {
	in := flag.String("in", "", "CSV file to encrypt (default: the sample customers.csv)")
	out := flag.String("out", "", "where to write the encrypted CSV (default: a file in the temporary directory)")
	column := flag.String("column", "card_number", "the column to encrypt")
	policy := flag.String("policy", "", `custody policy of the envelope key ("" selects "default")`)
	resource := flag.String("resource", "examples/rowcrypt", "resource of the envelope key; the caller needs list, generate, datakey and decrypt on it, and audit.read for the last step")
	timeout := flag.Duration("timeout", time.Minute, "bound on the whole run")
	flag.Parse()

	input := sampleCSV
	if *in != "" {
		b, err := os.ReadFile(*in)
		if err != nil {
			return err
		}
		input = b
	}
	rows, err := csv.NewReader(bytes.NewReader(input)).ReadAll()
	if err != nil {
		return fmt.Errorf("reading the CSV: %w", err)
	}
	if len(rows) < 1 {
		return errors.New("the CSV has no header row")
	}
	col := slices.Index(rows[0], *column)
	if col < 0 {
		return fmt.Errorf("the CSV has no column %q (columns: %s)", *column, strings.Join(rows[0], ", "))
	}

	c, err := newClient()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	// Every call of this run carries a request id starting with runID, so
	// that its audit entries can be found afterwards.
	runID := "rowcrypt-" + randomHex(6)
	head, err := c.AuditHead(ctx, &cofferv1.AuditHeadRequest{})
	if err != nil {
		return fmt.Errorf("reading the audit head: %w", err)
	}

	encrypted, err := encryptColumn(ctx, c, runID, rows, col, *policy, *resource)
	if err != nil {
		return err
	}
	if *out == "" {
		*out = filepath.Join(os.TempDir(), runID+".csv")
	}
	if err := writeCSV(*out, encrypted); err != nil {
		return err
	}
	fmt.Printf("encrypted column %q of %d rows, one data key per row: %s\n", *column, len(rows)-1, *out)
	for _, row := range encrypted[1:min(4, len(encrypted))] {
		fmt.Printf("  %s  %s…  (%d bytes)\n", row[0], row[col][:32], len(row[col]))
	}

	// Read the encrypted table back from disk and decrypt it.
	f, err := os.Open(*out)
	if err != nil {
		return err
	}
	back, err := csv.NewReader(f).ReadAll()
	_ = f.Close()
	if err != nil {
		return fmt.Errorf("reading %s: %w", *out, err)
	}
	decrypted, err := decryptColumn(ctx, c, runID, back, col)
	if err != nil {
		return err
	}
	if !slices.EqualFunc(decrypted, rows, slices.Equal[[]string]) {
		return errors.New("the decrypted table differs from the input")
	}
	fmt.Printf("decrypted %d rows: the table equals the input\n\n", len(rows)-1)

	return printAudit(ctx, c, head.GetHeadSeq(), runID, *resource)
}

// encryptColumn returns a copy of rows whose column col, below the header
// row, holds the base64 of client.Seal of the cell.
func encryptColumn(ctx context.Context, c *client.Client, runID string, rows [][]string, col int, policy, resource string) ([][]string, error) {
	out := [][]string{rows[0]}
	for i, row := range rows[1:] {
		if col >= len(row) {
			return nil, fmt.Errorf("row %d has no column %d", i+1, col+1)
		}
		rctx := client.WithRequestID(ctx, fmt.Sprintf("%s-seal-%d", runID, i+1))
		blob, err := c.Seal(rctx, policy, resource, []byte(row[col]))
		if err != nil {
			return nil, fmt.Errorf("sealing row %d: %w", i+1, err)
		}
		enc := slices.Clone(row)
		enc[col] = base64.StdEncoding.EncodeToString(blob)
		out = append(out, enc)
	}
	return out, nil
}

// decryptColumn undoes encryptColumn.
func decryptColumn(ctx context.Context, c *client.Client, runID string, rows [][]string, col int) ([][]string, error) {
	out := [][]string{rows[0]}
	for i, row := range rows[1:] {
		blob, err := base64.StdEncoding.DecodeString(row[col])
		if err != nil {
			return nil, fmt.Errorf("row %d: %w", i+1, err)
		}
		rctx := client.WithRequestID(ctx, fmt.Sprintf("%s-open-%d", runID, i+1))
		pt, err := c.Open(rctx, blob)
		if err != nil {
			return nil, fmt.Errorf("opening row %d: %w", i+1, err)
		}
		dec := slices.Clone(row)
		dec[col] = string(pt)
		clear(pt)
		out = append(out, dec)
	}
	return out, nil
}

// writeCSV writes rows to path, readable by the owner only.
func writeCSV(path string, rows [][]string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.WriteAll(rows)
	if err := errors.Join(w.Error(), f.Close()); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// newClient builds a client from COFFER_ADDR (comma-separated host:port
// addresses), COFFER_CA, COFFER_CERT and COFFER_KEY, as the coffer CLI does.
func newClient() (*client.Client, error) {
	var missing []string
	env := func(name string) string {
		v := os.Getenv(name)
		if v == "" {
			missing = append(missing, name)
		}
		return v
	}
	addrs, ca, cert, key := env("COFFER_ADDR"), env("COFFER_CA"), env("COFFER_CERT"), env("COFFER_KEY")
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s not set (source the env file of a cluster, for example .coffer-dev/env)", strings.Join(missing, ", "))
	}
	tlsConf, err := transport.TLSConfig{CAFile: ca, CertFile: cert, KeyFile: key}.ClientTLS()
	if err != nil {
		return nil, fmt.Errorf("loading the TLS credentials: %w", err)
	}
	cfg := client.DefaultConfig()
	cfg.TLS = tlsConf
	for _, a := range strings.Split(addrs, ",") {
		if a = strings.TrimSpace(a); a != "" && !slices.Contains(cfg.Endpoints, a) {
			cfg.Endpoints = append(cfg.Endpoints, a)
		}
	}
	return client.New(cfg)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = io.ReadFull(rand.Reader, b)
	return hex.EncodeToString(b)
}

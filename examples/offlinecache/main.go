// Command offlinecache shows the client library's key cache working through
// an outage: it fetches a key whose policies allow caching, keeps it in an
// encrypted cache file, and, run again while no node is reachable, serves
// it from that file within the server's cache policy (time to live and
// maximum uses, counted across runs).
//
// It connects as the coffer CLI does, from COFFER_ADDR, COFFER_CA,
// COFFER_CERT and COFFER_KEY. See README.md in this directory for the steps
// with a dev cluster.
package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/transport"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "offlinecache:", err)
		os.Exit(1)
	}
}

func run() error {
	gkid := flag.String("gkid", "", "the key to get (required); its custody policy must allow caching")
	file := flag.String("cache", "", "the encrypted cache file (required)")
	uses := flag.Int("uses", 3, "how many times to get the key")
	flag.Parse()
	if *gkid == "" || *file == "" {
		return errors.New("-gkid and -cache are required")
	}
	c, err := newClient(*file)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.CacheFileError(); err != nil {
		fmt.Printf("cache file refused, starting empty: %v\n", err)
	}

	// No deadline of its own: each call is bounded by the client's
	// RetryDeadline, short here, after which GetKey falls back to the cache.
	ctx := context.Background()
	online := reachable(ctx, c)
	if online {
		fmt.Println("cluster: reachable")
	} else {
		fmt.Println("cluster: no node is reachable; only the cache can serve")
	}
	for i := 1; i <= *uses; i++ {
		resp, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: *gkid})
		if err != nil {
			return fmt.Errorf("get %d: %w", i, err)
		}
		sum := sha256.Sum256(resp.GetMaterial())
		fmt.Printf("get %d: key %s version %d, material sha256 %x...\n", i, resp.GetKey().GetGkid(), resp.GetVersion(), sum[:6])
	}
	if p := c.CachePolicy(); p != nil {
		fmt.Printf("cache policy in force: ttl %s, max entries %d, max uses %d, allowed %s, persist %t (source %s, generation %d)\n",
			p.GetTtl().AsDuration(), p.GetMaxEntries(), p.GetMaxUses(), strings.Join(p.GetAllowedOperations(), ","), p.GetPersist(), p.GetSource(), p.GetGeneration())
	}
	return nil
}

// reachable reports whether a node answers within two seconds.
func reachable(ctx context.Context, c *client.Client) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := c.ClusterStatus(ctx, &cofferv1.ClusterStatusRequest{})
	return err == nil || status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded
}

func newClient(cacheFile string) (*client.Client, error) {
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
	cfg.CacheFile = cacheFile
	cfg.RetryDeadline = 3 * time.Second // an outage is expected: fall back to the cache quickly
	for _, a := range strings.Split(addrs, ",") {
		if a = strings.TrimSpace(a); a != "" && !slices.Contains(cfg.Endpoints, a) {
			cfg.Endpoints = append(cfg.Endpoints, a)
		}
	}
	return client.New(cfg)
}

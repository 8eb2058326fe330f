package client

import (
	"context"
	"fmt"
	"iter"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// maxListPages bounds how many pages AllKeys follows, so a server that keeps
// returning tokens cannot hold a caller forever.
const maxListPages = 100_000

// Generate generates a key for resource under policy ("" selects the default
// policy) with a fresh request id and returns its metadata.
func (c *Client) Generate(ctx context.Context, policy, resource string, alg cofferv1.Algorithm) (*cofferv1.KeyMetadata, error) {
	resp, err := c.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{
		Policy:    policy,
		Resource:  resource,
		Algorithm: alg,
	})
	if err != nil {
		return nil, err
	}
	return resp.GetKey(), nil
}

// Get fetches a key by GKID with linearizable consistency and returns its
// material and metadata, after checking the key's use policy locally too
// (CheckUse with "get").
func (c *Client) Get(ctx context.Context, gkid string) ([]byte, *cofferv1.KeyMetadata, error) {
	resp, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gkid})
	if err != nil {
		return nil, nil, err
	}
	if err := CheckUse(resp.GetKey(), "get", time.Now()); err != nil {
		clear(resp.GetMaterial())
		return nil, nil, err
	}
	return resp.GetMaterial(), resp.GetKey(), nil
}

// AllKeys iterates over every key matching req's filters, following page
// tokens from req.PageToken on. A failed page yields (nil, err) and ends the
// iteration; so does a server that repeats a page token. req is not
// modified.
func (c *Client) AllKeys(ctx context.Context, req *cofferv1.ListKeysRequest) iter.Seq2[*cofferv1.KeyMetadata, error] {
	return func(yield func(*cofferv1.KeyMetadata, error) bool) {
		page := &cofferv1.ListKeysRequest{}
		if req != nil {
			page.Policy, page.Resource = req.GetPolicy(), req.GetResource()
			page.PageSize, page.PageToken = req.GetPageSize(), req.GetPageToken()
			page.Consistency = req.GetConsistency()
		}
		for range maxListPages {
			resp, err := c.ListKeys(ctx, page)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, k := range resp.GetKeys() {
				if !yield(k, nil) {
					return
				}
			}
			next := resp.GetNextPageToken()
			if next == "" {
				return
			}
			if next == page.PageToken {
				yield(nil, fmt.Errorf("client: ListKeys returned the same page token twice: %q", next))
				return
			}
			page.PageToken = next
		}
		yield(nil, fmt.Errorf("client: ListKeys: more than %d pages", maxListPages))
	}
}

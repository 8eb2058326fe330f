package client

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// The client is the envelopes' data key source: it wraps each data key
// under one key per policy and resource, the envelope key, which it finds
// or creates on first use and remembers for the life of the client.

// envKeyID is the envKeys map key of a policy and resource.
func envKeyID(policy, resource string) string { return policy + "\x00" + resource }

// envelopeKey returns the GKID of the key Seal wraps data keys under for
// policy and resource: the one remembered, else the newest active AES key
// that ListKeys shows for them, else a new AES-256 key (GenerateKey).
// Several clients (processes) that start at once may each create one;
// every envelope names its own, and later lookups settle on the newest.
func (c *Client) envelopeKey(ctx context.Context, policy, resource string) (string, error) {
	id := envKeyID(policy, resource)
	if g, ok := c.envKeys.Load(id); ok {
		return g.(string), nil
	}
	// One lookup at a time, so that the goroutines of one client that seal
	// for a new resource at once create one key, not one each.
	c.envMu.Lock()
	defer c.envMu.Unlock()
	if g, ok := c.envKeys.Load(id); ok {
		return g.(string), nil
	}
	var best *cofferv1.KeyMetadata
	for md, err := range c.AllKeys(ctx, &cofferv1.ListKeysRequest{Policy: policy, Resource: resource}) {
		if err != nil {
			return "", fmt.Errorf("%w for policy %q, resource %q: %w", ErrEnvelopeKey, policy, resource, err)
		}
		if usableEnvelopeKey(md, policy, resource, time.Now()) &&
			(best == nil || md.GetCreatedAt().AsTime().After(best.GetCreatedAt().AsTime())) {
			best = md
		}
	}
	if best == nil {
		md, err := c.Generate(ctx, policy, resource, cofferv1.Algorithm_ALGORITHM_AES_256)
		if err != nil {
			return "", fmt.Errorf("%w for policy %q, resource %q: %w", ErrEnvelopeKey, policy, resource, err)
		}
		best = md
	}
	c.envKeys.Store(id, best.GetGkid())
	return best.GetGkid(), nil
}

// usableEnvelopeKey reports whether md is an active AES key of exactly
// policy and resource whose use policy allows data keys now.
func usableEnvelopeKey(md *cofferv1.KeyMetadata, policy, resource string, now time.Time) bool {
	switch md.GetAlgorithm() {
	case cofferv1.Algorithm_ALGORITHM_AES_128, cofferv1.Algorithm_ALGORITHM_AES_192, cofferv1.Algorithm_ALGORITHM_AES_256:
	default:
		return false
	}
	return md.GetState() == cofferv1.KeyState_KEY_STATE_ACTIVE && md.GetPolicy() == policy &&
		md.GetResource() == resource && CheckUse(md, "datakey", now) == nil
}

// newDataKey asks for a fresh AES-256 data key under the envelope key of
// policy and resource. When the remembered envelope key can no longer issue
// data keys (NotFound or FailedPrecondition: destroyed, deactivated,
// rotated out of use), it is forgotten and the lookup made once more.
func (c *Client) newDataKey(ctx context.Context, policy, resource string) (key, wrapped []byte, err error) {
	if policy == "" {
		policy = "default"
	}
	if resource == "" {
		return nil, nil, fmt.Errorf("%w: a resource is required", ErrEnvelopeKey)
	}
	for try := 0; ; try++ {
		gkid, err := c.envelopeKey(ctx, policy, resource)
		if err != nil {
			return nil, nil, err
		}
		resp, err := c.GenerateDataKey(ctx, &cofferv1.GenerateDataKeyRequest{
			Gkid: gkid, Context: envelopeContext, Algorithm: cofferv1.Algorithm_ALGORITHM_AES_256,
		})
		if code := status.Code(err); try == 0 && (code == codes.NotFound || code == codes.FailedPrecondition) {
			c.envKeys.CompareAndDelete(envKeyID(policy, resource), gkid)
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		if len(resp.GetPlaintext()) != dataKeySize {
			clear(resp.GetPlaintext())
			return nil, nil, fmt.Errorf("%w: GenerateDataKey returned a %d-byte data key", ErrEnvelopeKey, len(resp.GetPlaintext()))
		}
		return resp.GetPlaintext(), resp.GetCiphertext(), nil
	}
}

// unwrapDataKey decrypts a wrapped data key through the cluster.
func (c *Client) unwrapDataKey(ctx context.Context, wrapped []byte) ([]byte, error) {
	resp, err := c.Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: wrapped, Context: envelopeContext})
	if err != nil {
		return nil, err
	}
	return resp.GetPlaintext(), nil
}

package client

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/ciphertext"
)

// The CryptoService calls encrypt and decrypt with a key that stays in the
// cluster. Each needs its operation grant ("encrypt", "decrypt",
// "datakey") and the grant on the key's resource, and is audited before any
// plaintext or data key leaves the node.
//
// For the retry policy they are reads: any node serves them, they are
// spread over the endpoints, and an attempt that fails with Unavailable (or
// its own deadline) is retried on another endpoint. Retrying is safe but not
// deduplicated: every attempt that reaches a node is audited, and Encrypt
// and GenerateDataKey draw a fresh nonce (and data key) on each, so the call
// returns the result of the attempt that succeeded; any ciphertext a node
// returns is valid. Every other failure is returned at once, for example
// InvalidArgument (a request beyond the limits below), PermissionDenied (a
// missing grant) or FailedPrecondition (a key that is not an AES key).
//
// The client does not check the limits below itself: the nodes enforce
// them.

// Limits the nodes enforce on CryptoService requests.
const (
	// MaxEncryptPlaintext is the most plaintext one Encrypt takes, in bytes.
	// Larger data: GenerateDataKey, and encrypt locally with the data key.
	MaxEncryptPlaintext = 64 << 10
	// MaxContextPairs is the most pairs an encryption context holds.
	MaxContextPairs = ciphertext.MaxContextPairs
	// MaxContextBytes bounds the total length, in bytes, of an encryption
	// context's keys and values. Keys must be non-empty, and keys and values
	// valid UTF-8.
	MaxContextBytes = ciphertext.MaxContextBytes
	// MaxBatchItems bounds the items of one batch call.
	MaxBatchItems = 1000
	// MaxBatchBytes bounds the plaintext or ciphertext of one batch call.
	MaxBatchBytes = 2 << 20
)

// Encrypt encrypts req.Plaintext (at most MaxEncryptPlaintext bytes) under
// the AES key req.Gkid, binding req.Context to the ciphertext: Decrypt must
// present the same pairs. The ciphertext names the key and its version, so
// Decrypt needs nothing else. req is not modified.
func (c *Client) Encrypt(ctx context.Context, req *cofferv1.EncryptRequest) (*cofferv1.EncryptResponse, error) {
	if req == nil {
		return nil, nilRequest("Encrypt")
	}
	return invoke(ctx, c, "Encrypt", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.EncryptResponse, error) {
		return ep.crypto.Encrypt(ctx, req, opts...)
	})
}

// Decrypt decrypts a ciphertext from Encrypt or GenerateDataKey with the key
// it names, given the context it was encrypted with. A ciphertext presented
// with another context, or moved to a key of another resource, does not
// decrypt. The caller owns the returned plaintext and should clear it when
// done.
func (c *Client) Decrypt(ctx context.Context, req *cofferv1.DecryptRequest) (*cofferv1.DecryptResponse, error) {
	if req == nil {
		return nil, nilRequest("Decrypt")
	}
	return invoke(ctx, c, "Decrypt", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.DecryptResponse, error) {
		return ep.crypto.Decrypt(ctx, req, opts...)
	})
}

// GenerateDataKey returns a fresh data key (req.Algorithm: AES_128 or
// AES_256, AES_256 when unspecified) and the same key encrypted under the
// AES key req.Gkid with req.Context bound, a ciphertext Decrypt opens. With
// req.WithoutPlaintext only the ciphertext is returned. The caller owns the
// plaintext data key: use it, then clear it, and keep only the ciphertext.
func (c *Client) GenerateDataKey(ctx context.Context, req *cofferv1.GenerateDataKeyRequest) (*cofferv1.GenerateDataKeyResponse, error) {
	if req == nil {
		return nil, nilRequest("GenerateDataKey")
	}
	if !c.cfg.PlainKeys && req.GetSealTo() == nil && !req.GetWithoutPlaintext() {
		return c.dataKeySealed(ctx, req)
	}
	return c.generateDataKey(ctx, req)
}

func (c *Client) generateDataKey(ctx context.Context, req *cofferv1.GenerateDataKeyRequest) (*cofferv1.GenerateDataKeyResponse, error) {
	return invoke(ctx, c, "GenerateDataKey", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.GenerateDataKeyResponse, error) {
		return ep.crypto.GenerateDataKey(ctx, req, opts...)
	})
}

// EncryptBytes encrypts plaintext (at most MaxEncryptPlaintext bytes) under
// the AES key gkid with encryptionContext bound (nil: none), with
// linearizable consistency, and returns the ciphertext. Neither plaintext
// nor encryptionContext is modified or kept. When the call fails with
// Unavailable (no node reachable) and the client cache policy allows
// "encrypt", a cached key of gkid encrypts locally instead, in the same
// format (see "Key cache" in DESIGN.md).
func (c *Client) EncryptBytes(ctx context.Context, gkid string, plaintext []byte, encryptionContext map[string]string) ([]byte, error) {
	resp, err := c.Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: gkid, Plaintext: plaintext, Context: encryptionContext})
	if err != nil {
		return c.encryptOffline(ctx, gkid, plaintext, encryptionContext, err)
	}
	return resp.GetCiphertext(), nil
}

// DecryptBytes decrypts ciphertext, given the context it was encrypted with
// (nil: none), with linearizable consistency, and returns the plaintext,
// which the caller owns and should clear when done. When the call fails
// with Unavailable and the client cache policy allows "decrypt", a cached
// key decrypts locally instead, if it is the version the ciphertext names.
func (c *Client) DecryptBytes(ctx context.Context, ciphertext []byte, encryptionContext map[string]string) ([]byte, error) {
	resp, err := c.Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: ciphertext, Context: encryptionContext})
	if err != nil {
		return c.decryptOffline(ctx, ciphertext, encryptionContext, err)
	}
	return resp.GetPlaintext(), nil
}

// EncryptNew is encrypt-and-custody: it generates a new AES key under
// req.Policy for req.Resource, encrypts req.Plaintext with it and stores the
// key, in one call. It is a write: if req.RequestId is empty the call uses a
// copy of req with a random id, the same on every attempt, so a retry
// returns the same key; req itself is not modified.
func (c *Client) EncryptNew(ctx context.Context, req *cofferv1.EncryptNewRequest) (*cofferv1.EncryptNewResponse, error) {
	if req == nil {
		return nil, nilRequest("EncryptNew")
	}
	if req.GetRequestId() == "" {
		req = proto.CloneOf(req)
		req.RequestId = NewRequestID()
	}
	return invoke(ctx, c, "EncryptNew", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.EncryptNewResponse, error) {
		return ep.crypto.EncryptNew(ctx, req, opts...)
	})
}

// ReEncrypt moves a ciphertext to another key (req.DestinationGkid), or to
// its key's newest version, without the plaintext leaving the cluster. It
// needs the decrypt grant on the source key and the encrypt grant on the
// destination. A read for the retry policy: a retry re-encrypts again.
func (c *Client) ReEncrypt(ctx context.Context, req *cofferv1.ReEncryptRequest) (*cofferv1.ReEncryptResponse, error) {
	if req == nil {
		return nil, nilRequest("ReEncrypt")
	}
	return invoke(ctx, c, "ReEncrypt", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.ReEncryptResponse, error) {
		return ep.crypto.ReEncrypt(ctx, req, opts...)
	})
}

// EncryptBatch encrypts many items in one call: one result per item, in
// order, each the response or the error (ItemError) its single Encrypt
// would have returned, and one audit entry per item. At most MaxBatchItems
// items and MaxBatchBytes of plaintext; set the consistency on the batch,
// not on the items.
func (c *Client) EncryptBatch(ctx context.Context, req *cofferv1.EncryptBatchRequest) (*cofferv1.EncryptBatchResponse, error) {
	if req == nil {
		return nil, nilRequest("EncryptBatch")
	}
	return invoke(ctx, c, "EncryptBatch", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.EncryptBatchResponse, error) {
		return ep.crypto.EncryptBatch(ctx, req, opts...)
	})
}

// DecryptBatch decrypts many items in one call, as EncryptBatch encrypts.
// The caller owns the returned plaintexts.
func (c *Client) DecryptBatch(ctx context.Context, req *cofferv1.DecryptBatchRequest) (*cofferv1.DecryptBatchResponse, error) {
	if req == nil {
		return nil, nilRequest("DecryptBatch")
	}
	return invoke(ctx, c, "DecryptBatch", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.DecryptBatchResponse, error) {
		return ep.crypto.DecryptBatch(ctx, req, opts...)
	})
}

// GenerateDataKeyBatch generates many data keys in one call, as
// EncryptBatch encrypts. The caller owns the returned data keys.
func (c *Client) GenerateDataKeyBatch(ctx context.Context, req *cofferv1.GenerateDataKeyBatchRequest) (*cofferv1.GenerateDataKeyBatchResponse, error) {
	if req == nil {
		return nil, nilRequest("GenerateDataKeyBatch")
	}
	if !c.cfg.PlainKeys && req.GetSealTo() == nil {
		return c.dataKeyBatchSealed(ctx, req)
	}
	return c.generateDataKeyBatch(ctx, req)
}

func (c *Client) generateDataKeyBatch(ctx context.Context, req *cofferv1.GenerateDataKeyBatchRequest) (*cofferv1.GenerateDataKeyBatchResponse, error) {
	return invoke(ctx, c, "GenerateDataKeyBatch", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.GenerateDataKeyBatchResponse, error) {
		return ep.crypto.GenerateDataKeyBatch(ctx, req, opts...)
	})
}

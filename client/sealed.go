package client

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/keyseal"
	"github.com/coffer-kms/coffer/transport"
)

// Key material sealed for this client (keyseal): GetKey and GenerateDataKey
// send a fresh HPKE public key with each call (SealTo) and accept the
// material only sealed to it and bound to that call (the operation, the
// key and version asked for, the call's request id and this client's
// identity), so that no one between the client and the node (a proxy
// ending TLS, a node forwarding) can read it or pass another's answer
// off as this one's. Config.SealKEM chooses the KEM; Config.PlainKeys
// asks for material in the clear (a node that predates sealing).

// ErrNotSealed is returned when a node answered a call that asked for
// sealed material with material in the clear, or with none.
var ErrNotSealed = errors.New("client: the node did not seal the key material to this call")

// sealing is one call's key pair and binding.
type sealing struct {
	r   *keyseal.Recipient
	ctx context.Context // carries the request id bound
	b   keyseal.Binding
}

// newSealing prepares a sealed call of op on gkid: a fresh key pair, and
// the request id of ctx's coffer-request-id header (a random one is set if
// there is none).
func (c *Client) newSealing(ctx context.Context, op, gkid string) (*sealing, error) {
	id, err := c.identity()
	if err != nil {
		return nil, err
	}
	kem := c.cfg.SealKEM
	if kem == 0 {
		kem = keyseal.KEMX25519
	}
	r, err := keyseal.NewRecipient(kem)
	if err != nil {
		return nil, err
	}
	reqID := ""
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		if v := md.Get(RequestIDKey); len(v) > 0 {
			reqID = v[len(v)-1]
		}
	}
	if reqID == "" {
		reqID = NewRequestID()
		ctx = WithRequestID(ctx, reqID)
	}
	return &sealing{r: r, ctx: ctx, b: keyseal.Binding{Operation: op, GKID: gkid, RequestID: reqID, Client: id}}, nil
}

func (s *sealing) sealTo() *cofferv1.SealTo {
	return &cofferv1.SealTo{KemId: uint32(s.r.KEMID()), PublicKey: s.r.PublicKey()}
}

// open opens sealed material of key version v.
func (s *sealing) open(v uint32, sealed []byte) ([]byte, error) {
	if len(sealed) == 0 {
		return nil, ErrNotSealed
	}
	b := s.b
	b.Version = v
	m, err := s.r.Open(b, sealed)
	if err != nil {
		return nil, fmt.Errorf("client: %s of key %s version %d: %w", b.Operation, b.GKID, v, err)
	}
	return m, nil
}

// identity is this client's identity as a node authenticates it, from the
// certificate in Config.TLS.
func (c *Client) identity() (string, error) {
	c.idOnce.Do(func() {
		certs := c.cfg.TLS.Certificates
		if len(certs) == 0 || len(certs[0].Certificate) == 0 {
			c.idErr = fmt.Errorf("%w: sealed key material needs the client certificate in Config.TLS.Certificates, to bind this client's identity", ErrInvalidConfig)
			return
		}
		leaf := certs[0].Leaf
		if leaf == nil {
			var err error
			if leaf, err = x509.ParseCertificate(certs[0].Certificate[0]); err != nil {
				c.idErr = fmt.Errorf("%w: client certificate: %v", ErrInvalidConfig, err)
				return
			}
		}
		id, err := transport.IdentityFromCert(leaf)
		if err != nil {
			c.idErr = fmt.Errorf("%w: client certificate: %v", ErrInvalidConfig, err)
			return
		}
		c.id = id.String()
	})
	return c.id, c.idErr
}

// getSealed is GetKey with the material sealed to this call.
func (c *Client) getSealed(ctx context.Context, req *cofferv1.GetKeyRequest) (*cofferv1.GetKeyResponse, error) {
	s, err := c.newSealing(ctx, "get", req.GetGkid())
	if err != nil {
		return nil, err
	}
	q := proto.CloneOf(req)
	q.SealTo = s.sealTo()
	resp, err := c.getKey(s.ctx, q)
	if err != nil {
		return nil, err
	}
	if len(resp.GetMaterial()) != 0 || (req.GetVersion() != 0 && resp.GetVersion() != req.GetVersion()) {
		clear(resp.GetMaterial())
		return nil, fmt.Errorf("%w (key %s: %d bytes in the clear, version %d)", ErrNotSealed, req.GetGkid(), len(resp.GetMaterial()), resp.GetVersion())
	}
	m, err := s.open(resp.GetVersion(), resp.GetSealedMaterial())
	if err != nil {
		return nil, err
	}
	resp.Material, resp.SealedMaterial = m, nil
	return resp, nil
}

// dataKeySealed is GenerateDataKey with the data key sealed to this call.
func (c *Client) dataKeySealed(ctx context.Context, req *cofferv1.GenerateDataKeyRequest) (*cofferv1.GenerateDataKeyResponse, error) {
	s, err := c.newSealing(ctx, "datakey", req.GetGkid())
	if err != nil {
		return nil, err
	}
	q := proto.CloneOf(req)
	q.SealTo = s.sealTo()
	resp, err := c.generateDataKey(s.ctx, q)
	if err != nil {
		return nil, err
	}
	if len(resp.GetPlaintext()) != 0 || resp.GetGkid() != req.GetGkid() {
		clear(resp.GetPlaintext())
		return nil, fmt.Errorf("%w (data key under %s)", ErrNotSealed, req.GetGkid())
	}
	m, err := s.open(resp.GetKeyVersion(), resp.GetSealedPlaintext())
	if err != nil {
		return nil, err
	}
	resp.Plaintext, resp.SealedPlaintext = m, nil
	return resp, nil
}

// dataKeyBatchSealed is GenerateDataKeyBatch with every item's data key
// sealed to one key pair of this call, each bound to the item's request
// id ("<request id>#<index>"). An item asked without plaintext stays so;
// an item answered in the clear, or that does not open, fails the call.
func (c *Client) dataKeyBatchSealed(ctx context.Context, req *cofferv1.GenerateDataKeyBatchRequest) (*cofferv1.GenerateDataKeyBatchResponse, error) {
	for _, it := range req.GetItems() {
		if it.GetWithoutPlaintext() {
			// Nothing to seal for that item; the node refuses a sealed
			// batch that mixes them, so send the batch as asked.
			return c.generateDataKeyBatch(ctx, req)
		}
	}
	s, err := c.newSealing(ctx, "datakey", "")
	if err != nil {
		return nil, err
	}
	q := proto.CloneOf(req)
	q.SealTo = s.sealTo()
	resp, err := c.generateDataKeyBatch(s.ctx, q)
	if err != nil {
		return nil, err
	}
	if len(resp.GetResults()) != len(req.GetItems()) {
		return nil, fmt.Errorf("%w (%d results for %d items)", ErrNotSealed, len(resp.GetResults()), len(req.GetItems()))
	}
	for i, res := range resp.GetResults() {
		dk := res.GetResponse()
		if res.GetError() != nil || dk == nil {
			continue
		}
		if len(dk.GetPlaintext()) != 0 || dk.GetGkid() != req.GetItems()[i].GetGkid() {
			clear(dk.GetPlaintext())
			return nil, fmt.Errorf("%w (batch item %d)", ErrNotSealed, i)
		}
		item := *s
		item.b.GKID, item.b.RequestID = dk.GetGkid(), fmt.Sprintf("%s#%d", s.b.RequestID, i)
		m, err := item.open(dk.GetKeyVersion(), dk.GetSealedPlaintext())
		if err != nil {
			return nil, err
		}
		dk.Plaintext, dk.SealedPlaintext = m, nil
	}
	return resp, nil
}

package client

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/msgsig"
)

// NewRequestID returns a random request id: 24 bytes from crypto/rand,
// URL-safe base64 without padding (32 characters, within the API's 64).
func NewRequestID() string { return msgsig.NewRequestID() }

// RequestIDKey is the gRPC metadata header that carries a caller-chosen
// request id on any call (see [WithRequestID]).
const RequestIDKey = msgsig.RequestIDHeader

// WithRequestID returns a copy of ctx whose calls carry id in the
// [RequestIDKey] header, replacing any id set before; an empty id removes
// it. Every attempt of a call made with the context sends the same id. The
// node that accepts the request records it as the request id of the
// request's audit entry when the request message has no request_id of its
// own, so that an entry can be matched with the call that caused it.
// GenerateKey and PutKey always send their own (a random one when the
// caller set none), which wins: set request_id in their messages instead.
// The header names a request for the audit only: it deduplicates nothing.
// The id must be printable ASCII (gRPC refuses other header values); the
// node records at most 1024 bytes of it. Request messages are not changed.
func WithRequestID(ctx context.Context, id string) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	md = md.Copy()
	if id == "" {
		md.Delete(RequestIDKey)
	} else {
		md.Set(RequestIDKey, id)
	}
	return metadata.NewOutgoingContext(ctx, md)
}

// GenerateKey asks the cluster to generate a key. If req.RequestId is empty
// the call uses a copy of req with a random id, the same on every attempt;
// req itself is not modified.
func (c *Client) GenerateKey(ctx context.Context, req *cofferv1.GenerateKeyRequest) (*cofferv1.GenerateKeyResponse, error) {
	if req == nil {
		return nil, nilRequest("GenerateKey")
	}
	if req.GetRequestId() == "" {
		req = proto.CloneOf(req)
		req.RequestId = NewRequestID()
	}
	return invoke(ctx, c, "GenerateKey", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.GenerateKeyResponse, error) {
		return ep.keys.GenerateKey(ctx, req, opts...)
	})
}

// PutKey imports key material. If req.RequestId is empty the call uses a copy
// of req with a random id, the same on every attempt; req itself is not
// modified.
func (c *Client) PutKey(ctx context.Context, req *cofferv1.PutKeyRequest) (*cofferv1.PutKeyResponse, error) {
	if req == nil {
		return nil, nilRequest("PutKey")
	}
	if req.GetRequestId() == "" {
		req = proto.CloneOf(req)
		req.RequestId = NewRequestID()
	}
	return invoke(ctx, c, "PutKey", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.PutKeyResponse, error) {
		return ep.keys.PutKey(ctx, req, opts...)
	})
}

// GetKey fetches a key's material and metadata, sealed to a fresh key of
// this call's and opened here (sealed.go; unless Config.PlainKeys, or req
// names its own SealTo, whose sealed_material the caller opens). A key whose cache policy
// (returned with it) and the client cache policy allow caching is kept,
// encrypted, and served from the cache within both without asking a node,
// also while no node is reachable; see keyCache and the package
// documentation. Config.DisableKeyCache turns this off.
func (c *Client) GetKey(ctx context.Context, req *cofferv1.GetKeyRequest) (*cofferv1.GetKeyResponse, error) {
	if req == nil {
		return nil, nilRequest("GetKey")
	}
	// The cache holds the version a plain get returned; a get of a given
	// version goes to a node.
	cached := c.cache != nil && req.GetVersion() == 0
	var miss cacheMiss
	if cached {
		// A damaged, expired or exhausted entry is not served: fetch the
		// key again (miss says why, for the error if that fails too).
		var resp *cofferv1.GetKeyResponse
		if resp, miss = c.cacheGet(req.GetGkid(), cacheOpGet); resp != nil {
			return resp, nil
		}
	}
	var resp *cofferv1.GetKeyResponse
	var err error
	if c.cfg.PlainKeys || req.GetSealTo() != nil {
		// In the clear, or sealed to the caller's own key: as asked.
		resp, err = c.getKey(ctx, req)
	} else {
		resp, err = c.getSealed(ctx, req)
	}
	if err != nil {
		if cached {
			err = c.missError(ctx, req.GetGkid(), err, miss.why)
		}
		return nil, err
	}
	if cached && len(resp.GetMaterial()) != 0 {
		c.cachePut(ctx, resp, miss)
	}
	return resp, nil
}

func (c *Client) getKey(ctx context.Context, req *cofferv1.GetKeyRequest) (*cofferv1.GetKeyResponse, error) {
	return invoke(ctx, c, "GetKey", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.GetKeyResponse, error) {
		return ep.keys.GetKey(ctx, req, opts...)
	})
}

// SetKeyState moves a key through its life cycle (cofferv1.KeyState). It is
// a write: sent to the leader, retried on Unavailable. Moving a key to the
// state it is already in succeeds and changes nothing, so a retry after an
// ambiguous failure is safe.
func (c *Client) SetKeyState(ctx context.Context, req *cofferv1.SetKeyStateRequest) (*cofferv1.SetKeyStateResponse, error) {
	if req == nil {
		return nil, nilRequest("SetKeyState")
	}
	return invoke(ctx, c, "SetKeyState", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.SetKeyStateResponse, error) {
		return ep.keys.SetKeyState(ctx, req, opts...)
	})
}

// RotateKey adds a new version of a key's material; new encryptions use it,
// older versions still decrypt until retired. It is a write: retried only
// where the first attempt cannot have reached a node.
func (c *Client) RotateKey(ctx context.Context, req *cofferv1.RotateKeyRequest) (*cofferv1.RotateKeyResponse, error) {
	if req == nil {
		return nil, nilRequest("RotateKey")
	}
	return invoke(ctx, c, "RotateKey", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.RotateKeyResponse, error) {
		return ep.keys.RotateKey(ctx, req, opts...)
	})
}

// RetireKeyVersion deletes an older version of a key's material on every
// node; ciphertexts under it no longer decrypt. Retrying an acknowledged
// retirement changes nothing.
func (c *Client) RetireKeyVersion(ctx context.Context, req *cofferv1.RetireKeyVersionRequest) (*cofferv1.RetireKeyVersionResponse, error) {
	if req == nil {
		return nil, nilRequest("RetireKeyVersion")
	}
	return invoke(ctx, c, "RetireKeyVersion", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.RetireKeyVersionResponse, error) {
		return ep.keys.RetireKeyVersion(ctx, req, opts...)
	})
}

// AmendKeyUsePolicy replaces one key's use policy (a security officer's
// operation, policy.update). Repeating an acknowledged amendment changes
// nothing.
func (c *Client) AmendKeyUsePolicy(ctx context.Context, req *cofferv1.AmendKeyUsePolicyRequest) (*cofferv1.AmendKeyUsePolicyResponse, error) {
	if req == nil {
		return nil, nilRequest("AmendKeyUsePolicy")
	}
	return invoke(ctx, c, "AmendKeyUsePolicy", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.AmendKeyUsePolicyResponse, error) {
		return ep.keys.AmendKeyUsePolicy(ctx, req, opts...)
	})
}

// DescribeKey fetches a key's metadata.
func (c *Client) DescribeKey(ctx context.Context, req *cofferv1.DescribeKeyRequest) (*cofferv1.DescribeKeyResponse, error) {
	if req == nil {
		return nil, nilRequest("DescribeKey")
	}
	return invoke(ctx, c, "DescribeKey", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.DescribeKeyResponse, error) {
		return ep.keys.DescribeKey(ctx, req, opts...)
	})
}

// ListKeys fetches one page of key metadata.
func (c *Client) ListKeys(ctx context.Context, req *cofferv1.ListKeysRequest) (*cofferv1.ListKeysResponse, error) {
	if req == nil {
		return nil, nilRequest("ListKeys")
	}
	return invoke(ctx, c, "ListKeys", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.ListKeysResponse, error) {
		return ep.keys.ListKeys(ctx, req, opts...)
	})
}

// ClusterStatus asks one node for the status of every member. With
// req.Digest every reachable member also reports the SHA-256 digest of its
// replicated state and the applied index it was taken at
// (NodeStatus.state_digest, state_digest_index): members at the same index
// must agree. Each member then reads its whole store, so ask only when
// comparing replicas.
func (c *Client) ClusterStatus(ctx context.Context, req *cofferv1.ClusterStatusRequest) (*cofferv1.ClusterStatusResponse, error) {
	if req == nil {
		req = &cofferv1.ClusterStatusRequest{}
	}
	return invoke(ctx, c, "ClusterStatus", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.ClusterStatusResponse, error) {
		return ep.cluster.Status(ctx, req, opts...)
	})
}

// PinNode replaces the certificate pinned for a cluster member, after the
// member's certificate was renewed (cluster.manage). The call is a write:
// any node forwards it to the leader.
func (c *Client) PinNode(ctx context.Context, req *cofferv1.PinNodeRequest) (*cofferv1.PinNodeResponse, error) {
	if req == nil {
		return nil, nilRequest("PinNode")
	}
	return invoke(ctx, c, "PinNode", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.PinNodeResponse, error) {
		return ep.cluster.PinNode(ctx, req, opts...)
	})
}

func nilRequest(method string) error {
	return &Error{Method: method, Err: status.Error(codes.InvalidArgument, "nil request")}
}

// RemoveNode removes a member from the cluster (cluster.manage).
func (c *Client) RemoveNode(ctx context.Context, req *cofferv1.RemoveNodeRequest) (*cofferv1.RemoveNodeResponse, error) {
	if req == nil {
		return nil, nilRequest("RemoveNode")
	}
	return invoke(ctx, c, "RemoveNode", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.RemoveNodeResponse, error) {
		return ep.cluster.RemoveNode(ctx, req, opts...)
	})
}

// TransferLeadership moves leadership to another voter (cluster.manage).
func (c *Client) TransferLeadership(ctx context.Context, req *cofferv1.TransferLeadershipRequest) (*cofferv1.TransferLeadershipResponse, error) {
	if req == nil {
		return nil, nilRequest("TransferLeadership")
	}
	return invoke(ctx, c, "TransferLeadership", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.TransferLeadershipResponse, error) {
		return ep.cluster.TransferLeadership(ctx, req, opts...)
	})
}

// DrainNode drains a member for maintenance, or undrains it
// (cluster.manage).
func (c *Client) DrainNode(ctx context.Context, req *cofferv1.DrainNodeRequest) (*cofferv1.DrainNodeResponse, error) {
	if req == nil {
		return nil, nilRequest("DrainNode")
	}
	return invoke(ctx, c, "DrainNode", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.DrainNodeResponse, error) {
		return ep.cluster.DrainNode(ctx, req, opts...)
	})
}

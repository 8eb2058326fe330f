package client

import (
	"context"

	"google.golang.org/grpc"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// The AccessService calls manage clients, certificate revocations and ACL
// rules. A change acknowledged by the cluster is enforced on every node for
// every request that arrives afterwards.
//
// Access writes carry no request id, so a write whose attempt reached the
// leader but whose answer was lost may be applied before the client retries
// it. SetClientActive, RevokeCertificate and RegisterClient with Update set
// a state and are safe to repeat. A repeated RegisterClient without Update,
// or Grant with an Id, fails with AlreadyExists, and a repeated RevokeGrant
// with NotFound: callers can check the state and treat those as success.
// Grant without an Id is not deduplicated (see Grant).

// RegisterClient registers a client (its groups and roles), or with
// req.Update replaces the groups and roles of an existing one.
func (c *Client) RegisterClient(ctx context.Context, req *cofferv1.RegisterClientRequest) (*cofferv1.ClientInfo, error) {
	if req == nil {
		return nil, nilRequest("RegisterClient")
	}
	return invoke(ctx, c, "RegisterClient", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.ClientInfo, error) {
		return ep.access.RegisterClient(ctx, req, opts...)
	})
}

// SetClientActive activates or deactivates a registered client. A
// deactivated client is refused without revoking its certificates.
func (c *Client) SetClientActive(ctx context.Context, req *cofferv1.SetClientActiveRequest) (*cofferv1.ClientInfo, error) {
	if req == nil {
		return nil, nilRequest("SetClientActive")
	}
	return invoke(ctx, c, "SetClientActive", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.ClientInfo, error) {
		return ep.access.SetClientActive(ctx, req, opts...)
	})
}

// GetClient fetches a registered client.
func (c *Client) GetClient(ctx context.Context, req *cofferv1.GetClientRequest) (*cofferv1.ClientInfo, error) {
	if req == nil {
		return nil, nilRequest("GetClient")
	}
	return invoke(ctx, c, "GetClient", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.ClientInfo, error) {
		return ep.access.GetClient(ctx, req, opts...)
	})
}

// ListClients lists every registered client.
func (c *Client) ListClients(ctx context.Context, req *cofferv1.ListClientsRequest) (*cofferv1.ListClientsResponse, error) {
	if req == nil {
		return nil, nilRequest("ListClients")
	}
	return invoke(ctx, c, "ListClients", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.ListClientsResponse, error) {
		return ep.access.ListClients(ctx, req, opts...)
	})
}

// RevokeCertificate puts a certificate serial on the cluster's deny list:
// every node refuses it, whoever presents it.
func (c *Client) RevokeCertificate(ctx context.Context, req *cofferv1.RevokeCertificateRequest) (*cofferv1.RevokeCertificateResponse, error) {
	if req == nil {
		return nil, nilRequest("RevokeCertificate")
	}
	return invoke(ctx, c, "RevokeCertificate", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.RevokeCertificateResponse, error) {
		return ep.access.RevokeCertificate(ctx, req, opts...)
	})
}

// Grant adds an ACL rule. When req.Id is empty the server picks the id, so
// an attempt that reached the leader before failing and is then retried can
// add a second rule with the same grant; set Id to make retries safe.
func (c *Client) Grant(ctx context.Context, req *cofferv1.GrantRequest) (*cofferv1.AclRuleInfo, error) {
	if req == nil {
		return nil, nilRequest("Grant")
	}
	return invoke(ctx, c, "Grant", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.AclRuleInfo, error) {
		return ep.access.Grant(ctx, req, opts...)
	})
}

// RevokeGrant removes an ACL rule by id.
func (c *Client) RevokeGrant(ctx context.Context, req *cofferv1.RevokeGrantRequest) (*cofferv1.RevokeGrantResponse, error) {
	if req == nil {
		return nil, nilRequest("RevokeGrant")
	}
	return invoke(ctx, c, "RevokeGrant", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.RevokeGrantResponse, error) {
		return ep.access.RevokeGrant(ctx, req, opts...)
	})
}

// ListGrants lists ACL rules, all of them or those of one subject.
func (c *Client) ListGrants(ctx context.Context, req *cofferv1.ListGrantsRequest) (*cofferv1.ListGrantsResponse, error) {
	if req == nil {
		return nil, nilRequest("ListGrants")
	}
	return invoke(ctx, c, "ListGrants", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.ListGrantsResponse, error) {
		return ep.access.ListGrants(ctx, req, opts...)
	})
}

// Check asks whether a client may perform an operation on a resource, and
// why. It changes nothing.
func (c *Client) Check(ctx context.Context, req *cofferv1.CheckRequest) (*cofferv1.CheckResponse, error) {
	if req == nil {
		return nil, nilRequest("Check")
	}
	return invoke(ctx, c, "Check", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.CheckResponse, error) {
		return ep.access.Check(ctx, req, opts...)
	})
}

package testenv

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/keyseal"
	"github.com/coffer-kms/coffer/transport"
)

// SealReply seals material released by op on key gkid, version, for the
// request in ctx, as a node does (node/sealed.go): to st's public key,
// bound to the request's coffer-request-id header and the caller's
// verified identity. In-memory fake servers of the client and CLI tests
// use it to answer a request that carries a SealTo.
func SealReply(ctx context.Context, st *cofferv1.SealTo, op, gkid string, version uint32, material []byte) ([]byte, error) {
	return SealItemReply(ctx, st, op, gkid, version, "", material)
}

// SealItemReply is SealReply for one item of a batch: the request id bound
// is the request's followed by "#" and item.
func SealItemReply(ctx context.Context, st *cofferv1.SealTo, op, gkid string, version uint32, item string, material []byte) ([]byte, error) {
	pk, err := keyseal.PublicKey(uint16(st.GetKemId()), st.GetPublicKey())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	id, err := transport.IdentityFromContext(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	reqID := ""
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("coffer-request-id"); len(v) > 0 {
			reqID = v[len(v)-1]
		}
	}
	if item != "" {
		reqID += "#" + item
	}
	return keyseal.Seal(pk, keyseal.Binding{Operation: op, GKID: gkid, Version: version, RequestID: reqID, Client: id.String()}, material)
}

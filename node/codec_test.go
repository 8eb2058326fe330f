package node

import (
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/fsm"
)

// rawCodec sends the bytes it is given as the request message.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*(v.(*[]byte)) = data.Materialize()
	return nil
}
func (rawCodec) Name() string { return "proto" }

// TestNode_MalformedMessageRefusedAndAudited: a request message that does
// not decode is InvalidArgument, not Internal, and leaves its audit entry.
func TestNode_MalformedMessageRefusedAndAudited(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	l, f := tc.waitLeader(), tc.follower()
	ctx := metadata.AppendToOutgoingContext(ctxT(t), RequestIDKey, "malformed-1")
	// Field 1 (gkid), length-delimited, claiming 100 bytes it does not have.
	var out []byte
	err := tc.conn(f).Invoke(ctx, "/"+cofferv1.KeyService_ServiceDesc.ServiceName+"/GetKey", []byte{0x0a, 100, 'k'}, &out, grpc.ForceCodecV2(rawCodec{}))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("malformed message: %v, want InvalidArgument", err)
	}
	found := tc.entriesByRequestID(l, fsm.AuditFilter{Operation: "get"})["malformed-1"]
	if len(found) != 1 || found[0].GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED || found[0].GetCaller() != "client:app" {
		t.Fatalf("entries of the malformed request: %v, want one failed entry by client:app", found)
	}
	// The node goes on serving well-formed requests.
	key := tc.mustGenerate(f, "after/malformed", "")
	tc.mustGet(f, key.GetGkid())
}

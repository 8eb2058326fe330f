package node

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/coffer-kms/coffer/custody"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/hsmwrap"
)

// LeaderHintKey is the trailer that carries the leader's client address on
// Unavailable errors, so clients can go straight to it.
const LeaderHintKey = "coffer-leader-addr"

// memberRefusedKey is the trailer a member-only door adds when it refuses
// the calling node itself (requireMember), so that a node whose forward was
// refused does not pass the refusal on as its client's.
const memberRefusedKey = "coffer-member-refused"

// codeTable is the one place errors become gRPC codes.
var codeTable = []struct {
	err  error
	code codes.Code
}{
	{ErrInvalidArgument, codes.InvalidArgument},
	{fsm.ErrInvalidCommand, codes.InvalidArgument},
	{hsmwrap.ErrInvalidArgument, codes.InvalidArgument},
	{ErrNotFound, codes.NotFound},
	{fsm.ErrNotFound, codes.NotFound},
	{fsm.ErrPolicyNotFound, codes.NotFound},
	{fsm.ErrPolicyExists, codes.AlreadyExists},
	{fsm.ErrKeyExists, codes.AlreadyExists},
	{fsm.ErrKEKVersionUnknown, codes.FailedPrecondition},
	{fsm.ErrClientNotFound, codes.NotFound},
	{fsm.ErrRuleNotFound, codes.NotFound},
	{fsm.ErrClientExists, codes.AlreadyExists},
	{fsm.ErrRuleExists, codes.AlreadyExists},
	{fsm.ErrConflict, codes.Aborted},
	{fsm.ErrKeyState, codes.FailedPrecondition},
	{fsm.ErrAbandoned, codes.Aborted},
	{ErrNoLeader, codes.Unavailable},
	{ErrNotLeader, codes.Unavailable},
	{ErrShuttingDown, codes.Unavailable},
	{ErrNotReady, codes.Unavailable},
	{ErrOverloaded, codes.ResourceExhausted},
	{ErrDiverged, codes.Unavailable},
	{custody.ErrUnavailable, codes.Unavailable},
	{custody.ErrNoKEK, codes.FailedPrecondition},
	{custody.ErrBadSeal, codes.InvalidArgument},
	{fsm.ErrDiverged, codes.Internal},
	{fsm.ErrNoCheckpoint, codes.FailedPrecondition},
	{hsmwrap.ErrUnavailable, codes.Unavailable},
	{hsmwrap.ErrKEKNotLoaded, codes.Unavailable},
	{fsm.ErrClosed, codes.Unavailable},
	{fsm.ErrRestoring, codes.Unavailable},
	{ErrUnauthenticated, codes.Unauthenticated},
	{ErrPermission, codes.PermissionDenied},
	{ErrNotMember, codes.PermissionDenied},
	{ErrPinMismatch, codes.PermissionDenied},
	{ErrNotAdmitted, codes.Unavailable},
	{ErrPrecondition, codes.FailedPrecondition},
	{custody.ErrIntegrity, codes.DataLoss},
	{hsmwrap.ErrIntegrity, codes.DataLoss},
	{fsm.ErrCorrupt, codes.DataLoss},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

// toStatus converts an error from the request path to a gRPC status error.
// Errors that already are statuses (from a forwarded call) pass through.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	// A refused key read carries the code and message Apply recorded in
	// its audit entry (fsm.ReadResult.Err).
	var re *fsm.RefusalError
	if errors.As(err, &re) {
		msg := re.Message
		if err != error(re) {
			msg = userMessage(err)
		}
		return status.Error(re.Code, msg)
	}
	for _, e := range codeTable {
		if errors.Is(err, e.err) {
			return status.Error(e.code, userMessage(err))
		}
	}
	return status.Error(codes.Internal, userMessage(err))
}

// userMessage is err's text in the caller's terms: the package names that
// begin sentinel errors ("fsm: ..."), which say where an error was raised
// rather than what was wrong with the request, are dropped from each
// wrapped part, and the state machine's "invalid command" is the caller's
// invalid request.
func userMessage(err error) string {
	parts := strings.Split(err.Error(), ": ")
	out := parts[:0]
	for _, p := range parts {
		switch p {
		case "fsm", "node", "authz", "hsmwrap", "audit", "barrier":
			continue
		case "invalid command":
			p = "invalid request"
		}
		out = append(out, p)
	}
	return strings.Join(out, ": ")
}

// statusInterceptor maps errors once for every unary RPC and attaches the
// leader hint trailer.
func statusInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err == nil {
		return resp, nil
	}
	var hint *leaderHint
	if errors.As(err, &hint) && hint.leaderAddr != "" {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(LeaderHintKey, hint.leaderAddr))
	}
	return nil, toStatus(err)
}

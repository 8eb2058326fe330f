package node

// CacheService: server-governed client key caches (node/DESIGN.md, "Client
// key caches"). The door is a thin adapter, as for every service: the two
// writes are rows of the write table (writes.go), GetCachePolicy is an
// audited read, and Watch is an audited stream built on committed audit
// entries (cachewatch.go).

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

type cacheService struct {
	cofferv1.UnimplementedCacheServiceServer
	svc *service
}

func (s *cacheService) GetCachePolicy(ctx context.Context, req *cofferv1.GetCachePolicyRequest) (*cofferv1.GetCachePolicyResponse, error) {
	return s.svc.getCachePolicy(ctx, req)
}

func (s *cacheService) SetCachePolicy(ctx context.Context, req *cofferv1.SetCachePolicyRequest) (*cofferv1.SetCachePolicyResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeSetCachePolicy, req)
}

func (s *cacheService) FlushCaches(ctx context.Context, req *cofferv1.FlushCachesRequest) (*cofferv1.FlushCachesResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeFlushCaches, req)
}

func (s *cacheService) Watch(req *cofferv1.WatchCacheRequest, stream cofferv1.CacheService_WatchServer) error {
	return s.svc.watchCache(req, stream)
}

// maxFlushReason bounds a FlushCaches reason.
const maxFlushReason = 256

// validateSetCachePolicy checks a SetCachePolicy request on the accepting
// node and again on the leader.
func validateSetCachePolicy(q *cofferv1.SetCachePolicyRequest) error {
	if q.GetClient() != "" {
		if err := authz.ValidateClientName(q.GetClient()); err != nil {
			return fmt.Errorf("%w: client: %v", ErrInvalidArgument, err)
		}
	}
	p := q.GetPolicy()
	switch {
	case q.GetClear() && p != nil:
		return fmt.Errorf("%w: clear and policy are exclusive: clear removes the policy, leave policy unset", ErrInvalidArgument)
	case q.GetClear():
		return nil
	case p == nil:
		return fmt.Errorf("%w: policy is required (or clear, to remove one)", ErrInvalidArgument)
	case p.GetSource() != "":
		return fmt.Errorf("%w: policy.source is set by the server; leave it empty", ErrInvalidArgument)
	case p.GetGeneration() != 0:
		return fmt.Errorf("%w: policy.generation is set by the server; leave it 0", ErrInvalidArgument)
	case p.GetRevision() != 0:
		return fmt.Errorf("%w: policy.revision is set by the server; leave it 0", ErrInvalidArgument)
	}
	if err := fsm.CheckCachePolicy(p); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return nil
}

func validateFlushCaches(q *cofferv1.FlushCachesRequest) error {
	return validReason(q.GetReason(), maxFlushReason)
}

// storedCachePolicy is the policy a request sets, as stored: its settings
// only (the server-set fields are filled in when it is read).
func storedCachePolicy(p *cofferv1.ClientCachePolicy) *cofferv1.ClientCachePolicy {
	out := proto.CloneOf(p)
	out.Source, out.Generation, out.Revision = "", 0, 0
	return out
}

// setCachePolicy runs on the leader. A client's own policy is part of its
// record, which carries an integrity tag over every field: the leader
// builds the next record, tags it and writes it with PUT_CLIENT at the
// record's revision, like every client change. The cluster default is its
// own record (SET_CACHE_POLICY).
func (s *service) setCachePolicy(ctx context.Context, r *request, req *cofferv1.SetCachePolicyRequest) (*cofferv1.SetCachePolicyResponse, error) {
	if name := req.GetClient(); name != "" {
		cur, err := s.barrier.VerifiedClient(name)
		if err != nil {
			return nil, err
		}
		rec := proto.CloneOf(cur)
		rec.Revision, rec.CachePolicy = cur.GetRevision()+1, nil
		if !req.GetClear() {
			rec.CachePolicy = storedCachePolicy(req.GetPolicy())
		}
		r.describe(name, cachePolicyChanged("client "+name, cur.GetCachePolicy(), rec.GetCachePolicy()))
		if err := s.barrier.Tag("c/"+name, rec, nil); err != nil {
			return nil, err
		}
		res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_PUT_CLIENT,
			&cofferv1.PutClientCommand{Client: rec, ExpectedRevision: cur.GetRevision(), Audit: r.entry})
		if err != nil {
			return nil, err
		}
		p, err := s.fsm.CachePolicyWith(res.Client)
		if err != nil {
			return nil, err
		}
		return &cofferv1.SetCachePolicyResponse{Policy: p}, nil
	}
	cur, err := s.fsm.DefaultCachePolicy()
	if err != nil {
		return nil, err
	}
	var next *cofferv1.ClientCachePolicy
	if !req.GetClear() {
		next = storedCachePolicy(req.GetPolicy())
		next.Revision = cur.GetRevision() + 1
	}
	r.describe("", cachePolicyChanged("the cluster default", cur, next))
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_SET_CACHE_POLICY,
		&cofferv1.SetCachePolicyCommand{Policy: next, Clear: req.GetClear(), ExpectedRevision: cur.GetRevision(), Audit: r.entry})
	if err != nil {
		return nil, err
	}
	return &cofferv1.SetCachePolicyResponse{Policy: res.CachePolicy}, nil
}

// flushCaches runs on the leader: it raises the cluster's cache generation.
func (s *service) flushCaches(ctx context.Context, r *request, req *cofferv1.FlushCachesRequest) (*cofferv1.FlushCachesResponse, error) {
	r.explain(cachesFlushed(req.GetReason()))
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_FLUSH_CACHES, &cofferv1.FlushCachesCommand{Audit: r.entry})
	if err != nil {
		return nil, err
	}
	return &cofferv1.FlushCachesResponse{Generation: res.CacheGeneration}, nil
}

// getCachePolicy answers the caller's own policy in force, read (after
// linearizing, unless stale) from its integrity-checked client record.
func (s *service) getCachePolicy(ctx context.Context, req *cofferv1.GetCachePolicyRequest) (*cofferv1.GetCachePolicyResponse, error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.authorizedRead(ctx, c, authz.OpCacheRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	p, err := s.cachePolicyOf(c.id.Name)
	if err != nil {
		return nil, err
	}
	return &cofferv1.GetCachePolicyResponse{Policy: p, Client: c.id.Name}, nil
}

// cachePolicyOf is the policy in force for client name on this node.
func (s *service) cachePolicyOf(name string) (*cofferv1.ClientCachePolicy, error) {
	rec, err := s.barrier.VerifiedClient(name)
	if err != nil {
		return nil, err
	}
	return s.fsm.CachePolicyWith(rec)
}

var (
	writeSetCachePolicy = &writeRow[*cofferv1.SetCachePolicyRequest, *cofferv1.SetCachePolicyResponse]{
		op: authz.OpCacheManage,
		in: (*cofferv1.ForwardRequest).GetSetCachePolicy,
		wrap: func(q *cofferv1.SetCachePolicyRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_SetCachePolicy{SetCachePolicy: q}}
		},
		out: (*cofferv1.ForwardResponse).GetSetCachePolicy,
		result: func(p *cofferv1.SetCachePolicyResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_SetCachePolicy{SetCachePolicy: p}}
		},
		validate: validateSetCachePolicy,
		execute:  (*service).setCachePolicy,
	}
	writeFlushCaches = &writeRow[*cofferv1.FlushCachesRequest, *cofferv1.FlushCachesResponse]{
		op: authz.OpCacheFlush,
		in: (*cofferv1.ForwardRequest).GetFlushCaches,
		wrap: func(q *cofferv1.FlushCachesRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_FlushCaches{FlushCaches: q}}
		},
		out: (*cofferv1.ForwardResponse).GetFlushCaches,
		result: func(p *cofferv1.FlushCachesResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_FlushCaches{FlushCaches: p}}
		},
		validate: validateFlushCaches,
		execute:  (*service).flushCaches,
	}
)

// Package client is the Go client library for Coffer.
//
// A [Client] talks to a set of Coffer nodes over mutual TLS, one gRPC
// connection per node, and offers one method per RPC of the public API
// (coffer.v1.KeyService, PolicyService, AccessService, AuditService and
// ClusterService). Every node serves every
// RPC: writes are forwarded to the Raft leader by the node that receives them,
// reads are answered locally.
//
//	tlsConf, err := transport.TLSConfig{CAFile: ca, CertFile: cert, KeyFile: key}.ClientTLS()
//	...
//	cfg := client.DefaultConfig()
//	cfg.Endpoints = []string{"node1:7400", "node2:7400", "node3:7400"}
//	cfg.TLS = tlsConf
//	c, err := client.New(cfg)
//	...
//	defer c.Close()
//	resp, err := c.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "db/orders"})
//
// # Load balancing
//
// Reads are spread over the endpoints round-robin (an atomic counter picks
// the starting endpoint of each call). Writes (GenerateKey, PutKey) go first
// to the node that the last successful write named as leader in its response
// header ([LeaderAddrKey]), when that node is one of the endpoints: a follower
// would forward the write there anyway, so this saves a hop. The remembered
// leader is dropped when it fails with codes.Unavailable. An endpoint whose last attempt failed
// with codes.Unavailable is skipped for [Config.Cooldown]; when every endpoint
// is cooling down the client tries them anyway rather than fail without trying.
//
// # Retries
//
// One call makes at most [Config.MaxAttempts] attempts. Each attempt has its
// own deadline, [Config.RequestTimeout], bounded by the caller's context. An
// attempt is retried, on the next endpoint and after an exponential backoff
// starting at [Config.Backoff], only when it failed with:
//
//   - codes.Unavailable (the node is down, unreachable, or cannot serve the
//     request right now, for example while there is no leader); or
//   - codes.DeadlineExceeded of that attempt alone, while the caller's context
//     still has time left.
//
// Every other failure (InvalidArgument, NotFound, PermissionDenied,
// FailedPrecondition, ...) is returned at once: trying again elsewhere would
// give the same answer. A cancelled or expired caller context ends the call.
//
// Retrying writes is safe because GenerateKey and PutKey carry a request id:
// a node that sees the same id from the same caller again returns the first
// result instead of creating a second key. When the caller leaves
// request_id empty the client fills in a random one (see [NewRequestID])
// before the first attempt, on a copy of the request, and sends the same id on
// every attempt of that call. Callers that retry a call themselves, after the
// client has given up, should set request_id explicitly so their retries are
// deduplicated too.
//
// # Leader hints
//
// A node that cannot serve a request because of where the leader is may
// attach the leader's client address to its Unavailable error, in the
// response trailer (or header) metadata under the key [LeaderAddrKey]
// ("coffer-leader-addr"); a server sets it with grpc.SetTrailer before
// returning the error. The value must be host:port (at most 256 bytes;
// anything else is ignored). When such a hint is present the next attempt goes
// straight to that address, without backoff. If the address is not one of the
// configured endpoints it is dialled and added to the endpoint set (at most
// [MaxEndpoints] endpoints in all; hints beyond that are ignored), so later
// calls are spread over it too. Hints on other errors are ignored.
//
// # Errors
//
// Every failed call returns an *[Error] that keeps the gRPC status of the last
// attempt: status.Code(err) and status.FromError(err) work on it directly, and
// errors.Is(err, [ErrRetriesExhausted]) tells that the client gave up after
// retrying. Misuse that never reaches a node returns [ErrClosed] or
// [ErrInvalidConfig] (wrapped).
//
// # Key cache and use policies
//
// Every key comes with its cache policy and use policy. GetKey keeps a key
// whose cache policy allows it, for the policy's TTL (or until the key's
// not_after, if sooner), up to the policy's max_keys, and serves it from
// memory until then: encrypted under a per-process random AES-256-GCM key,
// with the GKID and metadata as associated data, so a tampered or moved
// entry is dropped and fetched again. Keys are not cached unless their
// policy says so (the default policy does not); Config.DisableKeyCache
// turns caching off, and Forget empties the cache. Get and CheckUse enforce
// the use policy locally.
//
// # Concurrency
//
// A Client is safe for concurrent use by many goroutines; share one per
// process rather than creating one per request.
package client

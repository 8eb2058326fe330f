// Package client is the Go client library for Coffer.
//
// A [Client] talks to a set of Coffer nodes over mutual TLS, one gRPC
// connection per node, and offers one method per RPC of the public API
// (coffer.v1.KeyService, PolicyService, AccessService, AuditService,
// CryptoService and ClusterService). Every node serves every
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
// # Data encryption
//
// The CryptoService calls use a key without releasing it: [Client.Encrypt]
// encrypts up to [MaxEncryptPlaintext] bytes under an AES key,
// [Client.Decrypt] decrypts with the key the ciphertext names, and
// [Client.GenerateDataKey] returns a fresh data key with a copy of it
// encrypted under the key, for data too large to send (encrypt it locally,
// store the encrypted data key beside it, and Decrypt that later). An
// encryption context, a map of at most [MaxContextPairs] pairs and
// [MaxContextBytes] bytes, is bound to the ciphertext: decrypting needs the
// same pairs. [Client.EncryptBytes] and [Client.DecryptBytes] are the
// byte-slice shorthands:
//
//	ct, err := c.EncryptBytes(ctx, gkid, secret, map[string]string{"tenant": "acme"})
//	...
//	pt, err := c.DecryptBytes(ctx, ct, map[string]string{"tenant": "acme"})
//
// # Envelope encryption
//
// [Client.Seal] and [Client.Open] encrypt records locally with
// AES-256-GCM under a fresh data key per record, issued by GenerateDataKey
// and wrapped under an AES key the client finds or creates for the
// record's policy and resource; [Client.SealStream] and [Client.OpenStream]
// do the same for streams, in constant memory. The plaintext never leaves
// the process and the data key is wiped after use; the envelope carries the
// wrapped data key, so opening it needs nothing else. ENVELOPE.md specifies
// the format, DESIGN.md explains the choices:
//
//	blob, err := c.Seal(ctx, "", "billing/cards", card)
//	...
//	card, err = c.Open(ctx, blob)
//
// # Signed requests and responses
//
// Every request that releases key material or changes state is signed
// with the key of the client certificate in Config.TLS (a file key or a
// crypto.Signer in a token), over the method, the request id, the time, a
// commitment to the arguments and the HPKE key material is sealed to; the
// node that decides checks it and keeps it in the audit entry. Every
// response that carries key material or a decision must be signed by a
// node of the cluster (a certificate from Config.TLS.RootCAs naming a
// node) for the request as sent; a response that is not is discarded and
// the call fails with an error matching msgsig.ErrUnsigned,
// msgsig.ErrBadSignature or msgsig.ErrMismatch (errors.Is), not retried.
// Neither can be turned off. msgsig/FORMAT.md specifies both.
//
// The CryptoService calls are reads for the retry policy below (any node
// serves them); retrying them is safe, though each attempt that reaches a
// node is audited.
//
// # Load balancing
//
// Reads, the CryptoService calls among them, are spread over the endpoints
// round-robin (an atomic counter picks the starting endpoint of each call). Writes (GenerateKey, PutKey) go first
// to the node that the last successful write named as leader in its response
// header ([LeaderAddrKey]), when that node is one of the endpoints: a follower
// would forward the write there anyway, so this saves a hop. The remembered
// leader is dropped when it fails with codes.Unavailable. An endpoint whose last attempt failed
// with codes.Unavailable is skipped for [Config.Cooldown]; when every endpoint
// is cooling down the client tries them anyway rather than fail without trying.
//
// # Retries
//
// A call retries until its deadline, not for a fixed number of attempts, so
// that it rides through a leader election or the loss of a node. The call's
// deadline is the caller's context's deadline when it has one, however far
// away; when it has none, [Config.RetryDeadline] (10 s by default) from the
// start of the call, so a call never retries forever. [Config.MaxAttempts], when positive, also
// limits the number of attempts (1 disables retries); zero, the default,
// sets no count.
//
// Each attempt of a unary call has its own deadline, [Config.RequestTimeout]
// clipped to what is left of the call's deadline. An attempt is retried, on
// the next endpoint, only when it failed with:
//
//   - codes.Unavailable (the node is down, unreachable, or cannot serve the
//     request right now, for example while there is no leader); or
//   - codes.DeadlineExceeded of that attempt alone, while the call's
//     deadline has not passed.
//
// Every other failure (InvalidArgument, NotFound, PermissionDenied,
// FailedPrecondition, ...) is returned at once: trying again elsewhere would
// give the same answer. A cancelled caller context ends the call at once.
//
// Before each retry the client waits an exponential backoff: [Config.Backoff]
// (50 ms by default) before the first retry, doubling for each further one
// up to [Config.MaxBackoff] (1 s by default), every wait varied by ±20%
// jitter. A wait never runs past the call's deadline: when the next wait
// would end at or after it, the client waits half the time left instead and
// makes a last attempt in the other half, provided that half is at least
// 100 ms; when that attempt fails too, or too little time is left for it,
// the call gives up at once rather than sleep into its deadline. The only
// retry without a wait is the one that follows a leader hint (see below).
//
// The streaming calls that retry, [Client.AuditExport] and
// [Client.Snapshot], follow the same policy until data has reached the
// writer (after that a failure ends the call: the writer cannot be rewound);
// their attempts have no timeout of their own, since a long transfer takes a
// while, but no attempt starts after the call's deadline.
// [Client.AuditFollow] applies it to each outage: failures in a row with no
// entry between them are retried until the caller's deadline or, without
// one, for RetryDeadline from the first of them.
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
// Any call may also name its request in the [RequestIDKey]
// ("coffer-request-id") gRPC header: [WithRequestID] returns a context whose
// calls carry it, on every attempt. The node records it as the request id of
// the request's audit entry when the message has no request_id of its own,
// so that an audit entry can be matched with the call that caused it; a
// write that a follower forwards to the leader keeps it. A message's own
// request_id wins: GenerateKey and PutKey always send one (the random one
// the client fills in, if the caller set none), so to correlate those, set
// request_id in the message instead. The header deduplicates nothing: it
// does not make access writes safe to retry. The client never changes the
// caller's request messages for it.
//
// # Leader hints
//
// A node that cannot serve a request because of where the leader is may
// attach the leader's client address to its Unavailable error, in the
// response trailer (or header) metadata under the key [LeaderAddrKey]
// ("coffer-leader-addr"); a server sets it with grpc.SetTrailer before
// returning the error. The value must be host:port (at most 256 bytes;
// anything else is ignored). When such a hint is present the next attempt goes
// straight to that address, without backoff, unless the attempt that brought
// the hint was itself following one: then the usual backoff comes first, so
// nodes that name each other cannot make the client spin until the deadline.
// If the address is not one of the
// configured endpoints it is dialled and added to the endpoint set (at most
// [MaxEndpoints] endpoints in all; hints beyond that are ignored), so later
// calls are spread over it too. Hints on other errors are ignored.
//
// # Errors
//
// Every failed call returns an *[Error] that keeps the gRPC status of the last
// attempt: status.Code(err) and status.FromError(err) work on it directly.
// When the client gave up after retrying, errors.Is(err,
// [ErrRetriesExhausted]) holds, the error says how long the call tried, how
// many attempts it made, the endpoint of the last one and that one's error
// (for example "GetKey: Unavailable: gave up after 9.781s and 15
// attempt(s) (context deadline exceeded), last to node2:7400: no leader"),
// and, when the deadline ran out, errors.Is(err, context.DeadlineExceeded)
// holds too. A call ended by its caller's cancellation matches
// context.Canceled instead. Misuse that never reaches a node returns
// [ErrClosed] or [ErrInvalidConfig] (wrapped).
//
// # Key cache and use policies
//
// Every key comes with its cache policy and use policy, and the cluster
// gives every client a client cache policy (CacheService.GetCachePolicy;
// [Client.CachePolicy] returns the one in force). GetKey keeps a key only
// when both allow it: for the shorter of the two TTLs (and never past the
// key's not_after), within the smaller of the key's max_keys and the
// client's max_entries, for at most the client's max_uses hits (a hit is a
// use; then the key is fetched again), and serves it from the cache only if
// the client policy allows "get". The client asks for its policy before it
// first caches a key; while it cannot get one (a node that predates
// CacheService, or none reachable at that moment) nothing is cached, and it
// asks again after a minute. Entries are encrypted under a per-process
// random AES-256-GCM key, with the GKID, version and metadata as
// associated data, so a tampered or moved entry is dropped and fetched
// again. Keys are not cached unless their policy says so (the default
// policy does not); Config.DisableKeyCache turns caching off, and Forget
// empties the cache (and removes its file).
//
// The cluster governs the cache: once a cache is in use, the client keeps a
// Watch stream open to some node (reconnecting with backoff, resuming after
// the last event it applied) and drops a key, or everything, when told to,
// and applies a new policy at once; it also asks for its policy every
// minute (or every TTL, when shorter). A stricter policy drops what it no
// longer allows; a higher generation (FlushCaches) drops everything.
//
// With Config.CacheFile, and a policy that allows persisting, the cache is
// kept in a file encrypted and authenticated under a key derived from the
// client's credentials (Config.CacheFileKey for keys a token holds); a file
// that does not authenticate is refused, left for the next write to
// replace, and reported by [Client.CacheFileError]. Expiry and max_uses
// hold across restarts: uses are reserved in the file, in blocks, before
// they are served.
//
// While no node answers, GetKey goes on serving cached keys within their
// policy; when the cache cannot serve either, the error says why and
// matches [ErrCacheMiss] as well as the call's Unavailable error. When the
// client policy allows "encrypt" or "decrypt", EncryptBytes and
// DecryptBytes use a cached key locally, in the service's ciphertext
// format, but only after the call to the cluster failed with Unavailable.
// DESIGN.md explains the choices and the file format. Get and CheckUse
// enforce the use policy locally.
//
// # Concurrency
//
// A Client is safe for concurrent use by many goroutines; share one per
// process rather than creating one per request.
package client

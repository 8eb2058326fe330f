package transport

import (
	"crypto/tls"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// Keepalive and handshake settings shared by ServerOptions and Dial. The
// client pings no more often than the server permits, so healthy clients are
// never disconnected for "too many pings".
const (
	// KeepaliveMinTime is the most frequent ping a server tolerates.
	KeepaliveMinTime = 10 * time.Second
	// KeepaliveTime is how long a connection may be silent before a ping.
	KeepaliveTime = 30 * time.Second
	// KeepaliveTimeout is how long to wait for a ping's answer.
	KeepaliveTimeout = 10 * time.Second
	// ConnectionTimeout bounds a server-side connection handshake.
	ConnectionTimeout = 10 * time.Second
)

// GRPCLimits bounds what a gRPC peer may send. Zero fields take the value
// from DefaultGRPCLimits.
type GRPCLimits struct {
	// MaxRecvMsgSize and MaxSendMsgSize are per-message bounds in bytes.
	MaxRecvMsgSize int
	MaxSendMsgSize int
	// MaxConcurrentStreams bounds concurrent RPCs per connection.
	MaxConcurrentStreams uint32
}

// DefaultGRPCLimits returns 4 MiB messages each way and 1024 concurrent
// streams per connection.
func DefaultGRPCLimits() GRPCLimits {
	return GRPCLimits{
		MaxRecvMsgSize:       4 << 20,
		MaxSendMsgSize:       4 << 20,
		MaxConcurrentStreams: 1024,
	}
}

// withDefaults fills zero fields from DefaultGRPCLimits.
func (l GRPCLimits) withDefaults() GRPCLimits {
	d := DefaultGRPCLimits()
	if l.MaxRecvMsgSize <= 0 {
		l.MaxRecvMsgSize = d.MaxRecvMsgSize
	}
	if l.MaxSendMsgSize <= 0 {
		l.MaxSendMsgSize = d.MaxSendMsgSize
	}
	if l.MaxConcurrentStreams == 0 {
		l.MaxConcurrentStreams = d.MaxConcurrentStreams
	}
	return l
}

// ServerOptions returns the options every Coffer gRPC server uses: TLS
// credentials from tlsConf (normally TLSConfig.ServerTLS), the message and
// stream limits, a handshake timeout, server keepalive pings and keepalive
// enforcement. Callers append their own options (interceptors, services).
//
// tlsConf must not be nil: Coffer never serves gRPC in plaintext. A nil
// tlsConf panics, as it is a programming error.
func ServerOptions(tlsConf *tls.Config, lim GRPCLimits) []grpc.ServerOption {
	if tlsConf == nil {
		panic("transport: ServerOptions requires a TLS configuration")
	}
	lim = lim.withDefaults()
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(tlsConf)),
		grpc.MaxRecvMsgSize(lim.MaxRecvMsgSize),
		grpc.MaxSendMsgSize(lim.MaxSendMsgSize),
		grpc.MaxConcurrentStreams(lim.MaxConcurrentStreams),
		grpc.ConnectionTimeout(ConnectionTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    KeepaliveTime,
			Timeout: KeepaliveTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             KeepaliveMinTime,
			PermitWithoutStream: true,
		}),
	}
}

// Dial creates a gRPC client connection to addr (host:port or any gRPC
// target) over TLS from tlsConf (normally TLSConfig.ClientTLS), with
// keepalive pings and the DefaultGRPCLimits message sizes as default call
// options. opts are applied after these defaults and may override them.
// Like grpc.NewClient, it does not connect until first use.
func Dial(addr string, tlsConf *tls.Config, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if addr == "" {
		return nil, fmt.Errorf("%w: empty gRPC target", ErrInvalidConfig)
	}
	if tlsConf == nil {
		return nil, fmt.Errorf("%w: gRPC dial requires a TLS configuration", ErrInvalidConfig)
	}
	if tlsConf.InsecureSkipVerify {
		return nil, fmt.Errorf("%w: TLS configuration skips server verification", ErrInvalidConfig)
	}
	lim := DefaultGRPCLimits()
	all := make([]grpc.DialOption, 0, 4+len(opts))
	all = append(all,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                KeepaliveTime,
			Timeout:             KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(lim.MaxRecvMsgSize),
			grpc.MaxCallSendMsgSize(lim.MaxSendMsgSize),
		),
		grpc.WithUserAgent("coffer"),
	)
	all = append(all, opts...)
	cc, err := grpc.NewClient(addr, all...)
	if err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
	}
	return cc, nil
}

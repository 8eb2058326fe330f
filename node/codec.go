package node

import (
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// requestCodec is the API server's codec. gRPC turns a request message that
// does not decode into Internal before any interceptor runs, so the request
// would reach no door: no InvalidArgument, no audit entry. This codec
// decodes as gRPC's own does, but a message that does not decode is
// delivered empty and remembered as malformed; the door that receives it
// (takeMalformed) refuses it with InvalidArgument, audited like any other
// refusal. Responses are encoded by gRPC's codec unchanged.
type requestCodec struct {
	encoding.CodecV2
	malformed sync.Map // proto.Message -> error
}

func newRequestCodec() *requestCodec {
	return &requestCodec{CodecV2: encoding.GetCodecV2(protoenc.Name)}
}

func (c *requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	if m, ok := v.(proto.Message); ok && err != nil {
		proto.Reset(m)
		c.malformed.Store(m, err)
		return nil
	}
	return err
}

// takeMalformed returns the refusal of a request message that did not
// decode, and forgets it; nil for a message that decoded.
func (c *requestCodec) takeMalformed(m any) error {
	if err, ok := c.malformed.LoadAndDelete(m); ok {
		return fmt.Errorf("%w: the request message does not decode: %v", ErrInvalidArgument, err)
	}
	return nil
}

// malformedStreamInterceptor refuses a stream message that did not decode,
// as the unary door does, when the handler receives it.
func (s *service) malformedStreamInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &checkedStream{ServerStream: ss, codec: s.codec})
}

type checkedStream struct {
	grpc.ServerStream
	codec *requestCodec
}

func (s *checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err := s.codec.takeMalformed(m); err != nil {
		return toStatus(err)
	}
	return nil
}

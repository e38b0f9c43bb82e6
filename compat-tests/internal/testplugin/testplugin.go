// Package testplugin is the `test` plugin of go-plugin's own test suite, written for this harness:
// the handshake, the plugin type used by Go hosts (GRPCClient) and the Go reference server
// implementation (GRPCServer) of the grpctest.Test service.
//
// It speaks the contract of go-plugin v1.8.0's test/grpc/test.proto with the semantics of
// upstream's testGRPCServer (plugin_test.go); the code is our own.
package testplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	grpctest "github.com/hashicorp/go-plugin/test/grpc"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Name is the name the `test` plugin is dispensed under.
const Name = "test"

// Handshake is the handshake of the plain modes (protocol version 1).
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "TEST_MAGIC_COOKIE",
	MagicCookieValue: "test",
}

// VersionedHandshake carries only the cookie; versions come from VersionedPlugins.
var VersionedHandshake = plugin.HandshakeConfig{
	MagicCookieKey:   "TEST_MAGIC_COOKIE",
	MagicCookieValue: "test",
}

// PluginSet returns a fresh plugin set holding the `test` plugin.
func PluginSet() plugin.PluginSet {
	return plugin.PluginSet{Name: &Plugin{}}
}

// Plugin implements plugin.GRPCPlugin for both roles. Logger is used by the server role only
// (PrintKV); nil means hclog JSON at Trace on stderr, as upstream's helper process does.
type Plugin struct {
	plugin.NetRPCUnsupportedPlugin
	Logger hclog.Logger
}

var _ plugin.GRPCPlugin = (*Plugin)(nil)

// GRPCServer registers the reference implementation of grpctest.Test.
func (p *Plugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	logger := p.Logger
	if logger == nil {
		logger = hclog.New(&hclog.LoggerOptions{
			Level:      hclog.Trace,
			Output:     os.Stderr,
			JSONFormat: true,
		})
	}
	grpctest.RegisterTestServer(s, &server{broker: broker, logger: logger})
	return nil
}

// GRPCClient returns a *Client for the host side.
func (p *Plugin) GRPCClient(doneCtx context.Context, broker *plugin.GRPCBroker, conn *grpc.ClientConn) (interface{}, error) {
	return &Client{
		Test:    grpctest.NewTestClient(conn),
		Broker:  broker,
		Conn:    conn,
		DoneCtx: doneCtx,
	}, nil
}

// pingPong answers every Ping with "pong".
type pingPong struct {
	grpctest.UnimplementedPingPongServer
}

func (pingPong) Ping(context.Context, *grpctest.PingRequest) (*grpctest.PongResponse, error) {
	return &grpctest.PongResponse{Msg: "pong"}, nil
}

func newPingPongServer(opts []grpc.ServerOption) *grpc.Server {
	s := grpc.NewServer(opts...)
	grpctest.RegisterPingPongServer(s, pingPong{})
	return s
}

// acceptAndServe serves PingPong on broker id and returns once the broker has registered the
// listener, so the other side may dial (or, multiplexed, knock) as soon as it learns the id.
//
// go-plugin's AcceptAndServe calls the server factory only after Accept has succeeded, which is
// the signal used here. Upstream's own test server just runs `go AcceptAndServe(...)` and returns
// the id, which races: with the multiplexed broker a knock that arrives before Accept registered
// the listener makes a Go plugin's main server fail ("received knock on ID 1 that doesn't have a
// listener") and the plugin exit; a Go host answers such a knock with "no listener for id N".
func acceptAndServe(broker *plugin.GRPCBroker, id uint32) error {
	ready := make(chan struct{})
	go broker.AcceptAndServe(id, func(opts []grpc.ServerOption) *grpc.Server {
		close(ready)
		return newPingPongServer(opts)
	})
	select {
	case <-ready:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("broker Accept(%d) did not complete within 5 s", id)
	}
}

// pingOverBroker dials a brokered id, calls PingPong.Ping and checks the answer.
func pingOverBroker(ctx context.Context, broker *plugin.GRPCBroker, id uint32) error {
	conn, err := broker.Dial(id)
	if err != nil {
		return fmt.Errorf("dial broker id %d: %w", id, err)
	}
	defer func() { _ = conn.Close() }()
	resp, err := grpctest.NewPingPongClient(conn).Ping(ctx, &grpctest.PingRequest{})
	if err != nil {
		return fmt.Errorf("ping broker id %d: %w", id, err)
	}
	if resp.Msg != "pong" {
		return fmt.Errorf("ping broker id %d: got %q, want \"pong\"", id, resp.Msg)
	}
	return nil
}

// server is the Go reference implementation of grpctest.Test.
type server struct {
	grpctest.UnimplementedTestServer
	broker *plugin.GRPCBroker
	logger hclog.Logger
}

func (s *server) Double(_ context.Context, req *grpctest.TestRequest) (*grpctest.TestResponse, error) {
	return &grpctest.TestResponse{Output: req.Input * 2}, nil
}

func (s *server) PrintKV(_ context.Context, req *grpctest.PrintKVRequest) (*grpctest.PrintKVResponse, error) {
	var value interface{}
	switch v := req.Value.(type) {
	case *grpctest.PrintKVRequest_ValueString:
		value = v.ValueString
	case *grpctest.PrintKVRequest_ValueInt:
		value = v.ValueInt
	default:
		return nil, fmt.Errorf("PrintKV: no value for key %q", req.Key)
	}
	s.logger.Info("PrintKV called", req.Key, value)
	return &grpctest.PrintKVResponse{}, nil
}

func (s *server) Bidirectional(ctx context.Context, req *grpctest.BidirectionalRequest) (*grpctest.BidirectionalResponse, error) {
	if err := pingOverBroker(ctx, s.broker, req.Id); err != nil {
		return nil, fmt.Errorf("plugin side: %w", err)
	}
	id := s.broker.NextId()
	if err := acceptAndServe(s.broker, id); err != nil {
		return nil, fmt.Errorf("plugin side: %w", err)
	}
	return &grpctest.BidirectionalResponse{Id: id}, nil
}

func (s *server) Stream(stream grpctest.Test_StreamServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&grpctest.TestResponse{Output: req.Input}); err != nil {
			return err
		}
	}
}

func (s *server) PrintStdio(_ context.Context, req *grpctest.PrintStdioRequest) (*emptypb.Empty, error) {
	// os.Stdout/os.Stderr are read at call time: after the handshake plugin.Serve has replaced
	// them with the pipes that feed GRPCStdio.
	if len(req.Stdout) > 0 {
		_, _ = os.Stdout.Write(req.Stdout)
	}
	if len(req.Stderr) > 0 {
		_, _ = os.Stderr.Write(req.Stderr)
	}
	return &emptypb.Empty{}, nil
}

func (s *server) Panic(_ context.Context, req *grpctest.PanicRequest) (*emptypb.Empty, error) {
	panic(req.Message)
}

// Client is what a Go host gets from Dispense("test").
type Client struct {
	Test    grpctest.TestClient
	Broker  *plugin.GRPCBroker
	Conn    *grpc.ClientConn
	DoneCtx context.Context // cancelled by go-plugin when the plugin process is gone
}

// Double calls Test.Double.
func (c *Client) Double(ctx context.Context, n int32) (int32, error) {
	resp, err := c.Test.Double(ctx, &grpctest.TestRequest{Input: n})
	if err != nil {
		return 0, err
	}
	return resp.Output, nil
}

// PrintKV calls Test.PrintKV with a string or an int value.
func (c *Client) PrintKV(ctx context.Context, key string, value interface{}) error {
	req := &grpctest.PrintKVRequest{Key: key}
	switch v := value.(type) {
	case string:
		req.Value = &grpctest.PrintKVRequest_ValueString{ValueString: v}
	case int:
		req.Value = &grpctest.PrintKVRequest_ValueInt{ValueInt: int32(v)}
	case int32:
		req.Value = &grpctest.PrintKVRequest_ValueInt{ValueInt: v}
	default:
		return fmt.Errorf("PrintKV: unsupported value type %T", value)
	}
	_, err := c.Test.PrintKV(ctx, req)
	return err
}

// Bidirectional exercises the broker in both directions: the host serves PingPong on a fresh
// broker id, the plugin dials it and pings, then the plugin serves PingPong on its own fresh id,
// which the host dials and pings.
func (c *Client) Bidirectional(ctx context.Context) error {
	id := c.Broker.NextId()
	if err := acceptAndServe(c.Broker, id); err != nil {
		return fmt.Errorf("host side: %w", err)
	}

	resp, err := c.Test.Bidirectional(ctx, &grpctest.BidirectionalRequest{Id: id})
	if err != nil {
		return fmt.Errorf("Bidirectional(%d): %w", id, err)
	}
	if err := pingOverBroker(ctx, c.Broker, resp.Id); err != nil {
		return fmt.Errorf("host side: %w", err)
	}
	return nil
}

// Stream sends start..stop-1 on Test.Stream, one at a time, and returns what came back.
func (c *Client) Stream(ctx context.Context, start, stop int32) ([]int32, error) {
	stream, err := c.Test.Stream(ctx)
	if err != nil {
		return nil, err
	}
	var out []int32
	for i := start; i < stop; i++ {
		if err := stream.Send(&grpctest.TestRequest{Input: i}); err != nil {
			return out, fmt.Errorf("send %d: %w", i, err)
		}
		resp, err := stream.Recv()
		if err != nil {
			return out, fmt.Errorf("recv after %d: %w", i, err)
		}
		out = append(out, resp.Output)
	}
	if err := stream.CloseSend(); err != nil {
		return out, err
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		return out, fmt.Errorf("after CloseSend: got %v, want io.EOF", err)
	}
	return out, nil
}

// PrintStdio calls Test.PrintStdio.
func (c *Client) PrintStdio(ctx context.Context, stdout, stderr []byte) error {
	_, err := c.Test.PrintStdio(ctx, &grpctest.PrintStdioRequest{Stdout: stdout, Stderr: stderr})
	return err
}

// Panic calls Test.Panic; the plugin is expected to crash, so an error is the normal result.
func (c *Client) Panic(ctx context.Context, msg string) error {
	_, err := c.Test.Panic(ctx, &grpctest.PanicRequest{Message: msg})
	return err
}

package main

// Server-streaming throughput: gRPC's own benchmark contract (grpc.testing.BenchmarkService,
// grpc-go's generated interop/grpc_testing package; the Rust side is proto/examples/benchmark.proto)
// behind a go-plugin handshake. the bench binary started with the cookie `GOPLUGIN_BENCH=stream` is the Go plugin (the Rust one is the cargo
// example bench_plugin); `bench -stream PATH` is the Go host measuring either.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/interop/grpc_testing"
)

// streamName is the plugin the streaming bench dispenses.
const streamName = "bench"

// maxResponseSize bounds response_size as the Rust plugin does.
const maxResponseSize = 16 << 20

var streamHandshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "GOPLUGIN_BENCH",
	MagicCookieValue: "stream",
}

// streamPlugin serves and dispenses grpc.testing.BenchmarkService.
type streamPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (streamPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	grpc_testing.RegisterBenchmarkServiceServer(s, benchServer{})
	return nil
}

func (streamPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return grpc_testing.NewBenchmarkServiceClient(c), nil
}

type benchServer struct {
	grpc_testing.UnimplementedBenchmarkServiceServer
}

func benchResponse(req *grpc_testing.SimpleRequest) (*grpc_testing.SimpleResponse, error) {
	if req.ResponseSize < 0 || req.ResponseSize > maxResponseSize {
		return nil, fmt.Errorf("response_size %d is not in 0..=%d", req.ResponseSize, maxResponseSize)
	}
	return &grpc_testing.SimpleResponse{
		Payload: &grpc_testing.Payload{Body: make([]byte, req.ResponseSize)},
	}, nil
}

func (benchServer) UnaryCall(_ context.Context, req *grpc_testing.SimpleRequest) (*grpc_testing.SimpleResponse, error) {
	return benchResponse(req)
}

// StreamingFromServer sends the same response until the client cancels, as grpc-go's benchmark
// server does.
func (benchServer) StreamingFromServer(req *grpc_testing.SimpleRequest, stream grpc_testing.BenchmarkService_StreamingFromServerServer) error {
	resp, err := benchResponse(req)
	if err != nil {
		return err
	}
	for {
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// serveStream is the Go streaming plugin.
func serveStream() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: streamHandshake,
		Plugins:         plugin.PluginSet{streamName: streamPlugin{}},
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}

// streamRound starts the plugin at path, opens StreamingFromServer for messages of size bytes,
// reads warmup messages untimed, then times msgs messages; it returns messages per second.
func streamRound(path string, size, warmup, msgs int) (float64, error) {
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  streamHandshake,
		Plugins:          plugin.PluginSet{streamName: streamPlugin{}},
		Cmd:              exec.Command(path),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Name: "bench-stream", Level: hclog.Error, Output: os.Stderr}),
		SyncStdout:       io.Discard,
		SyncStderr:       io.Discard,
	})
	defer c.Kill()
	rpc, err := c.Client()
	if err != nil {
		return 0, err
	}
	raw, err := rpc.Dispense(streamName)
	if err != nil {
		return 0, err
	}
	bench, ok := raw.(grpc_testing.BenchmarkServiceClient)
	if !ok {
		return 0, fmt.Errorf("dispensed %T, not BenchmarkServiceClient", raw)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := bench.StreamingFromServer(ctx, &grpc_testing.SimpleRequest{ResponseSize: int32(size)})
	if err != nil {
		return 0, err
	}
	recv := func() error {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if got := len(resp.GetPayload().GetBody()); got != size {
			return fmt.Errorf("response of %d bytes, want %d", got, size)
		}
		return nil
	}
	for i := 0; i < warmup; i++ {
		if err := recv(); err != nil {
			return 0, fmt.Errorf("warm-up message %d: %w", i+1, err)
		}
	}
	t0 := time.Now()
	for i := 0; i < msgs; i++ {
		if err := recv(); err != nil {
			return 0, fmt.Errorf("message %d: %w", i+1, err)
		}
	}
	return float64(msgs) / time.Since(t0).Seconds(), nil
}

// streamJSON measures `rounds` rounds (a fresh plugin process each) and prints one JSON line:
// {"size": bytes, "stream_msgs_per_s": [...]}.
func streamJSON(path string, size, warmup, msgs, rounds int) error {
	if size < 0 || size > maxResponseSize || msgs < 1 || rounds < 1 || warmup < 0 {
		return errors.New("need 0 <= -stream-size <= 16 MiB, -stream-msgs >= 1, -rounds >= 1")
	}
	var rates []string
	for r := 0; r < rounds; r++ {
		rate, err := streamRound(path, size, warmup, msgs)
		if err != nil {
			return fmt.Errorf("stream round %d: %w", r+1, err)
		}
		rates = append(rates, strconv.FormatFloat(rate, 'f', 1, 64))
	}
	fmt.Printf("{\"size\":%d,\"stream_msgs_per_s\":[%s]}\n", size, strings.Join(rates, ","))
	return nil
}

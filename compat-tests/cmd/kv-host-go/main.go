// Command kv-host-go is go-plugin v1.8.0's host for upstream's examples/grpc KV contract, as
// upstream's examples/grpc/main.go, but it runs the plugin binary itself instead of `sh -c`, so
// it also runs where there is no shell (scripts/cross runs it on Windows).
//
// Usage: kv-host-go [-mtls] PLUGIN put KEY VALUE
//
//	kv-host-go [-mtls] PLUGIN get KEY
//
// `get` prints the value as upstream's host does. Any failure: the error on stderr, exit 1.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/examples/grpc/shared"
)

func main() {
	mtls := flag.Bool("mtls", false, "AutoMTLS")
	flag.Parse()
	args := flag.Args()
	if len(args) < 3 {
		fail(fmt.Errorf("usage: kv-host-go [-mtls] PLUGIN put KEY VALUE | get KEY"))
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  shared.Handshake,
		Plugins:          shared.PluginMap,
		Cmd:              exec.Command(args[0]),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         *mtls,
		Logger:           hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Warn}),
	})
	err := run(client, args[1:])
	client.Kill()
	if err != nil {
		fail(err)
	}
}

func run(client *plugin.Client, args []string) error {
	rpc, err := client.Client()
	if err != nil {
		return err
	}
	raw, err := rpc.Dispense(shared.PluginGRPC)
	if err != nil {
		return err
	}
	kv := raw.(shared.KV)
	switch {
	case args[0] == "get" && len(args) == 2:
		value, err := kv.Get(args[1])
		if err != nil {
			return err
		}
		fmt.Println(string(value))
		return nil
	case args[0] == "put" && len(args) == 3:
		return kv.Put(args[1], []byte(args[2]))
	default:
		return fmt.Errorf("unknown command %q", args)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "kv-host-go: %v\n", err)
	os.Exit(1)
}

// Command gopeer is the Go side of moorage's ttrpc interop tests and benchmark.
//
// It uses containerd/ttrpc 1.1.1 as Debian packages it (unary only) and serves or calls
// moorage.test.v1.Echo (tests/ttrpc/ttrpctest/echo.proto).
//
//	gopeer server -addr SOCK            serve Echo and Sink; prints "ready" once listening
//	gopeer client -addr SOCK            run the interop script, print one JSON object
//	gopeer bench  -addr SOCK [flags]    latency, throughput and 1 MiB figures as JSON
//	gopeer both   [flags]               bench with the server in this process
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/status"
)

const service = "moorage.test.v1.Echo"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gopeer server|client|bench|both -addr SOCK")
		os.Exit(2)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	addr := fs.String("addr", "", "unix socket path")
	dur := fs.Duration("dur", 2*time.Second, "bench: duration of each throughput trial")
	calls := fs.Int("n", 20000, "bench: sequential calls for latency")
	callers := fs.String("callers", "1,8,64", "bench: concurrent callers for throughput")
	size := fs.Int("size", 64, "bench: small payload bytes")
	bigCalls := fs.Int("bigcalls", 200, "bench: 1 MiB calls")
	fs.Parse(os.Args[2:])

	var err error
	switch mode {
	case "server":
		err = runServer(*addr)
	case "client":
		err = runClient(*addr)
	case "bench":
		err = runBench(*addr, *dur, *calls, *callers, *size, *bigCalls)
	case "both":
		dir, _ := os.MkdirTemp("", "gopeer")
		defer os.RemoveAll(dir)
		sock := dir + "/s"
		go serve(sock, nil)
		for i := 0; i < 100; i++ {
			if _, e := os.Stat(sock); e == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		err = runBench(sock, *dur, *calls, *callers, *size, *bigCalls)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gopeer:", err)
		os.Exit(1)
	}
}

func echo(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
	var req EchoRequest
	if err := unmarshal(&req); err != nil {
		return nil, err
	}
	if req.SleepMs > 0 {
		select {
		case <-time.After(time.Duration(req.SleepMs) * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if req.FailCode != 0 {
		return nil, status.Error(codesOf(req.FailCode), req.FailMessage)
	}
	resp := &EchoResponse{Data: req.Data, RemainingMs: -1}
	if md, ok := ttrpc.GetMetadata(ctx); ok {
		for k, vs := range md {
			for _, v := range vs {
				resp.Metadata = append(resp.Metadata, k+"="+v)
			}
		}
		sort.Strings(resp.Metadata)
	}
	if dl, ok := ctx.Deadline(); ok {
		resp.RemainingMs = time.Until(dl).Milliseconds()
	}
	return resp, nil
}

func sink(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
	var req EchoRequest
	if err := unmarshal(&req); err != nil {
		return nil, err
	}
	return &EchoResponse{}, nil
}

func serve(addr string, ready func()) error {
	s, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	s.Register(service, map[string]ttrpc.Method{"Echo": echo, "Sink": sink})
	os.Remove(addr)
	l, err := net.Listen("unix", addr)
	if err != nil {
		return err
	}
	if ready != nil {
		ready()
	}
	return s.Serve(context.Background(), l)
}

func runServer(addr string) error {
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		os.Remove(addr)
		os.Exit(0)
	}()
	err := serve(addr, func() { fmt.Println("ready") })
	if errors.Is(err, ttrpc.ErrServerClosed) {
		return nil
	}
	return err
}

func dial(addr string) (*ttrpc.Client, error) {
	conn, err := net.Dial("unix", addr)
	if err != nil {
		return nil, err
	}
	return ttrpc.NewClient(conn), nil
}

type result struct {
	Code        int      `json:"code"`
	Message     string   `json:"message,omitempty"`
	Data        string   `json:"data,omitempty"`
	Len         int      `json:"len,omitempty"`
	Metadata    []string `json:"metadata,omitempty"`
	RemainingMs int64    `json:"remaining_ms,omitempty"`
	ElapsedMs   int64    `json:"elapsed_ms,omitempty"`
	Ok          bool     `json:"ok"`
}

func outcome(resp *EchoResponse, err error, start time.Time) result {
	r := result{ElapsedMs: time.Since(start).Milliseconds(), Ok: err == nil}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			r.Code, r.Message = 4, err.Error()
		} else {
			st, _ := status.FromError(err)
			r.Code, r.Message = int(st.Code()), st.Message()
		}
		return r
	}
	r.Data = string(resp.Data)
	if len(r.Data) > 64 {
		r.Data = ""
	}
	r.Len = len(resp.Data)
	r.Metadata = resp.Metadata
	r.RemainingMs = resp.RemainingMs
	return r
}

func call(c *ttrpc.Client, ctx context.Context, method string, req *EchoRequest) result {
	start := time.Now()
	var resp EchoResponse
	err := c.Call(ctx, service, method, req, &resp)
	return outcome(&resp, err, start)
}

// runClient calls a Python server through every interop case and prints the outcomes.
func runClient(addr string) error {
	c, err := dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	bg := context.Background()
	out := map[string]interface{}{}

	md := ttrpc.MD{}
	md.Set("containerd-namespace-ttrpc", "default")
	md.Set("x-multi", "a", "b")
	out["echo"] = call(c, ttrpc.WithMetadata(bg, md), "Echo", &EchoRequest{Data: []byte("hello")})

	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	var bigResp EchoResponse
	err = c.Call(bg, service, "Echo", &EchoRequest{Data: big}, &bigResp)
	out["large"] = map[string]interface{}{"ok": err == nil, "equal": err == nil && string(bigResp.Data) == string(big)}

	out["error"] = call(c, bg, "Echo", &EchoRequest{FailCode: 5, FailMessage: "no such thing"})

	ctx, cancel := context.WithTimeout(bg, 200*time.Millisecond)
	out["timeout"] = call(c, ctx, "Echo", &EchoRequest{SleepMs: 5000})
	cancel()
	ctx, cancel = context.WithTimeout(bg, 10*time.Second)
	out["deadline"] = call(c, ctx, "Echo", &EchoRequest{Data: []byte("d")})
	cancel()

	out["no_method"] = call(c, bg, "Nope", &EchoRequest{})
	var r EchoResponse
	err = c.Call(bg, "moorage.test.v1.Missing", "Echo", &EchoRequest{}, &r)
	out["no_service"] = outcome(&r, err, time.Now())

	out["oversize"] = call(c, bg, "Echo", &EchoRequest{Data: make([]byte, 5<<20)})
	out["after_oversize"] = call(c, bg, "Echo", &EchoRequest{Data: []byte("still here")})

	var wg sync.WaitGroup
	var good int64
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			want := strconv.Itoa(i)
			res := call(c, bg, "Echo", &EchoRequest{Data: []byte(want)})
			if res.Ok && res.Data == want {
				atomic.AddInt64(&good, 1)
			}
		}(i)
	}
	wg.Wait()
	out["concurrent"] = good

	return json.NewEncoder(os.Stdout).Encode(out)
}

func codesOf(c int32) (code statusCode) { return statusCode(c) }

func percentile(sorted []time.Duration, p float64) float64 {
	idx := int(float64(len(sorted)-1) * p)
	return float64(sorted[idx].Nanoseconds()) / 1e3
}

func runBench(addr string, dur time.Duration, n int, callersList string, size, bigCalls int) error {
	c, err := dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	bg := context.Background()
	small := &EchoRequest{Data: make([]byte, size)}
	var resp EchoResponse
	for i := 0; i < 2000; i++ {
		if err := c.Call(bg, service, "Echo", small, &resp); err != nil {
			return err
		}
	}
	lat := make([]time.Duration, n)
	for i := range lat {
		t := time.Now()
		if err := c.Call(bg, service, "Echo", small, &resp); err != nil {
			return err
		}
		lat[i] = time.Since(t)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	out := map[string]interface{}{"p50_us": percentile(lat, 0.5), "p99_us": percentile(lat, 0.99)}

	rps := map[string]float64{}
	for _, s := range strings.Split(callersList, ",") {
		k, _ := strconv.Atoi(s)
		var count int64
		deadline := time.Now().Add(dur)
		start := time.Now()
		var wg sync.WaitGroup
		for g := 0; g < k; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var r EchoResponse
				for time.Now().Before(deadline) {
					if c.Call(bg, service, "Echo", small, &r) == nil {
						atomic.AddInt64(&count, 1)
					}
				}
			}()
		}
		wg.Wait()
		rps[s] = float64(count) / time.Since(start).Seconds()
	}
	out["rps"] = rps

	big := &EchoRequest{Data: make([]byte, 1<<20)}
	start := time.Now()
	for i := 0; i < bigCalls; i++ {
		if err := c.Call(bg, service, "Echo", big, &resp); err != nil {
			return err
		}
	}
	out["echo_1mib_mbps"] = float64(bigCalls) * float64(1<<20) / time.Since(start).Seconds() / 1e6
	return json.NewEncoder(os.Stdout).Encode(out)
}

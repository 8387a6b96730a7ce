// spdyclient: a test client of the CRI streaming server that speaks SPDY/3.1 through
// github.com/moby/spdystream (Debian's golang-github-docker-spdystream-dev), the library
// kubectl, crictl and critest use, with Kubernetes' stream conventions written out here;
// and WebSocket through github.com/gorilla/websocket (golang-github-gorilla-websocket-dev)
// with Kubernetes' channel protocol (ws* modes).
//
//	spdyclient exec|attach|wsexec|wsattach [-stdin] [-stdout] [-stderr] [-tty]
//	                       [-resize WxH,...] [-protocols p1,p2] [-status FILE] URL
//	spdyclient portforward|wsportforward -port P [-status FILE] URL
//
// stdin is copied to the stdin (or data) stream and half-closed at EOF; the output streams
// go to stdout/stderr. The status file gets JSON: the HTTP status, the negotiated
// protocol and what the error stream said. Exit 3 when the upgrade is refused.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/moby/spdystream"
)

type result struct {
	HTTP     int    `json:"http"`
	Protocol string `json:"protocol"`
	Error    string `json:"error"`
	Body     string `json:"body,omitempty"`
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "spdyclient: "+format+"\n", args...)
	os.Exit(2)
}

func writeStatus(path string, r result) {
	if path == "" {
		return
	}
	data, _ := json.Marshal(r)
	if err := ioutil.WriteFile(path, data, 0o600); err != nil {
		fail("status: %v", err)
	}
}

func upgrade(raw string, protocols []string) (net.Conn, *http.Response) {
	u, err := url.Parse(raw)
	if err != nil {
		fail("url: %v", err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		fail("dial: %v", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n", u.RequestURI(), u.Host)
	for _, p := range protocols {
		if p != "" {
			fmt.Fprintf(&b, "X-Stream-Protocol-Version: %s\r\n", p)
		}
	}
	b.WriteString("Content-Length: 0\r\n\r\n")
	if _, err := conn.Write([]byte(b.String())); err != nil {
		fail("write: %v", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		fail("response: %v", err)
	}
	return &bufConn{conn, br}, resp
}

func stream(c *spdystream.Connection, h http.Header) *spdystream.Stream {
	s, err := c.CreateStream(h, nil, false)
	if err != nil {
		fail("create stream %v: %v", h, err)
	}
	if err := s.WaitTimeout(30 * time.Second); err != nil {
		fail("stream reply %v: %v", h, err)
	}
	return s
}

func typed(t string, extra ...string) http.Header {
	h := http.Header{}
	h.Set("streamType", t)
	for i := 0; i+1 < len(extra); i += 2 {
		h.Set(extra[i], extra[i+1])
	}
	return h
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: spdyclient exec|attach|portforward [flags] URL")
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	stdin := fs.Bool("stdin", false, "send stdin")
	stdout := fs.Bool("stdout", true, "receive stdout")
	stderr := fs.Bool("stderr", false, "receive stderr")
	tty := fs.Bool("tty", false, "terminal")
	resize := fs.String("resize", "", "terminal sizes WxH,... sent on the resize stream")
	protos := fs.String("protocols", "v4.channel.k8s.io,v3.channel.k8s.io,v2.channel.k8s.io,channel.k8s.io", "offered protocols")
	statusFile := fs.String("status", "", "where to write the outcome (JSON)")
	port := fs.Int("port", 0, "port to forward")
	fs.Parse(os.Args[2:])
	if strings.HasPrefix(mode, "ws") {
		wsMain(mode, fs.Arg(0), *stdin, *tty, *resize, *protos, *statusFile, *port,
			fs.Lookup("protocols").Value.String() != fs.Lookup("protocols").DefValue)
		return
	}
	if mode == "portforward" {
		*protos = "portforward.k8s.io"
	}
	netConn, resp := upgrade(fs.Arg(0), strings.Split(*protos, ","))
	res := result{HTTP: resp.StatusCode, Protocol: resp.Header.Get("X-Stream-Protocol-Version")}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := ioutil.ReadAll(resp.Body)
		res.Body = string(body)
		writeStatus(*statusFile, res)
		os.Exit(3)
	}
	conn, err := spdystream.NewConnection(netConn, false)
	if err != nil {
		fail("spdy: %v", err)
	}
	go conn.Serve(spdystream.NoOpStreamHandler)

	var wg sync.WaitGroup
	copyOut := func(dst io.Writer, s *spdystream.Stream) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(dst, s)
		}()
	}
	var errStream *spdystream.Stream
	if mode == "portforward" {
		p := strconv.Itoa(*port)
		errStream = stream(conn, typed("error", "port", p, "requestID", "0"))
		data := stream(conn, typed("data", "port", p, "requestID", "0"))
		go func() {
			io.Copy(data, os.Stdin)
			data.Close()
		}()
		copyOut(os.Stdout, data)
	} else {
		errStream = stream(conn, typed("error"))
		if *stdin {
			in := stream(conn, typed("stdin"))
			go func() {
				io.Copy(in, os.Stdin)
				in.Close()
			}()
		}
		if *stdout {
			copyOut(os.Stdout, stream(conn, typed("stdout")))
		}
		if *stderr && !*tty {
			copyOut(os.Stderr, stream(conn, typed("stderr")))
		}
		if *tty && *resize != "" {
			rs := stream(conn, typed("resize"))
			enc := json.NewEncoder(rs)
			for _, size := range strings.Split(*resize, ",") {
				var w, h uint16
				fmt.Sscanf(size, "%dx%d", &w, &h)
				enc.Encode(map[string]uint16{"Width": w, "Height": h})
			}
		}
	}
	msg, _ := ioutil.ReadAll(errStream)
	wg.Wait()
	res.Error = string(msg)
	writeStatus(*statusFile, res)
	conn.Close()
}

// wsMain: the same over WebSocket channels (k8s.io/apimachinery wsstream): each binary
// message is a channel byte and data; v5 closes stdin with [255, 0].
func wsMain(mode, raw string, stdin, tty bool, resize, protos, statusFile string, port int, protosSet bool) {
	offered := []string{"v5.channel.k8s.io", "v4.channel.k8s.io"}
	if mode == "wsportforward" {
		offered = []string{"v4.channel.k8s.io"}
	}
	if protosSet {
		offered = strings.Split(protos, ",")
	}
	dialer := websocket.Dialer{Subprotocols: offered, HandshakeTimeout: 10 * time.Second}
	conn, resp, err := dialer.Dial(strings.Replace(raw, "http://", "ws://", 1), nil)
	res := result{}
	if resp != nil {
		res.HTTP = resp.StatusCode
	}
	if err != nil {
		if resp == nil {
			fail("websocket: %v", err)
		}
		body, _ := ioutil.ReadAll(resp.Body)
		res.Body = string(body)
		writeStatus(statusFile, res)
		os.Exit(3)
	}
	res.Protocol = conn.Subprotocol()
	var mu sync.Mutex
	send := func(ch byte, data []byte) {
		mu.Lock()
		defer mu.Unlock()
		conn.WriteMessage(websocket.BinaryMessage, append([]byte{ch}, data...))
	}
	if stdin || mode == "wsportforward" {
		go func() {
			buf := make([]byte, 32*1024)
			for {
				n, err := os.Stdin.Read(buf)
				if n > 0 {
					send(0, buf[:n])
				}
				if err != nil {
					break
				}
			}
			if res.Protocol == "v5.channel.k8s.io" {
				send(255, []byte{0})
			}
		}()
	}
	if tty && resize != "" && mode != "wsportforward" {
		for _, size := range strings.Split(resize, ",") {
			var w, h uint16
			fmt.Sscanf(size, "%dx%d", &w, &h)
			data, _ := json.Marshal(map[string]uint16{"Width": w, "Height": h})
			send(4, data)
		}
	}
	seen := map[byte]bool{}
	var errMsg []byte
	for {
		kind, msg, err := conn.ReadMessage()
		if err != nil {
			break
		}
		if kind != websocket.BinaryMessage || len(msg) == 0 {
			continue
		}
		ch, data := msg[0], msg[1:]
		if mode == "wsportforward" {
			if !seen[ch] { // the first message of each channel is its port
				seen[ch] = true
				if len(data) != 2 || int(data[0])|int(data[1])<<8 != port {
					fail("channel %d: port %v", ch, data)
				}
				continue
			}
			switch ch {
			case 0:
				os.Stdout.Write(data)
			case 1:
				errMsg = append(errMsg, data...)
			}
			continue
		}
		switch ch {
		case 1:
			os.Stdout.Write(data)
		case 2:
			os.Stderr.Write(data)
		case 3:
			errMsg = append(errMsg, data...)
		}
	}
	res.Error = string(errMsg)
	writeStatus(statusFile, res)
	conn.Close()
}

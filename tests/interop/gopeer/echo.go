package main

// Hand-written protobuf for moorage.test.v1.EchoRequest/EchoResponse
// (tests/ttrpc/ttrpctest/echo.proto), the way gogo generates Marshal/Unmarshal.

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
)

type EchoRequest struct {
	Data        []byte
	SleepMs     int64
	FailCode    int32
	FailMessage string
	Count       uint32
}

type EchoResponse struct {
	Data        []byte
	Metadata    []string
	RemainingMs int64
}

func (m *EchoRequest) Reset()         { *m = EchoRequest{} }
func (m *EchoRequest) String() string { return fmt.Sprintf("%+v", *m) }
func (*EchoRequest) ProtoMessage()    {}

func (m *EchoResponse) Reset()         { *m = EchoResponse{} }
func (m *EchoResponse) String() string { return fmt.Sprintf("%+v", *m) }
func (*EchoResponse) ProtoMessage()    {}

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendBytes(b []byte, tag byte, p []byte) []byte {
	b = append(b, tag)
	b = appendVarint(b, uint64(len(p)))
	return append(b, p...)
}

func (m *EchoRequest) Marshal() ([]byte, error) {
	b := make([]byte, 0, len(m.Data)+len(m.FailMessage)+32)
	if len(m.Data) > 0 {
		b = appendBytes(b, 0x0a, m.Data)
	}
	if m.SleepMs != 0 {
		b = appendVarint(append(b, 0x10), uint64(m.SleepMs))
	}
	if m.FailCode != 0 {
		b = appendVarint(append(b, 0x18), uint64(int64(m.FailCode)))
	}
	if m.FailMessage != "" {
		b = appendBytes(b, 0x22, []byte(m.FailMessage))
	}
	if m.Count != 0 {
		b = appendVarint(append(b, 0x28), uint64(m.Count))
	}
	return b, nil
}

func (m *EchoResponse) Marshal() ([]byte, error) {
	b := make([]byte, 0, len(m.Data)+32)
	if len(m.Data) > 0 {
		b = appendBytes(b, 0x0a, m.Data)
	}
	for _, s := range m.Metadata {
		b = appendBytes(b, 0x12, []byte(s))
	}
	if m.RemainingMs != 0 {
		b = appendVarint(append(b, 0x18), uint64(m.RemainingMs))
	}
	return b, nil
}

var errTruncated = errors.New("truncated message")

func readVarint(p []byte, i int) (uint64, int, error) {
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		if i >= len(p) {
			return 0, 0, errTruncated
		}
		c := p[i]
		i++
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return v, i, nil
		}
	}
	return 0, 0, errors.New("varint overflow")
}

// fields calls fn for each field: varints as v, length-delimited as b.
func fields(p []byte, fn func(num int, v uint64, b []byte)) error {
	for i := 0; i < len(p); {
		tag, n, err := readVarint(p, i)
		if err != nil {
			return err
		}
		i = n
		num := int(tag >> 3)
		switch tag & 7 {
		case 0:
			v, n, err := readVarint(p, i)
			if err != nil {
				return err
			}
			i = n
			fn(num, v, nil)
		case 2:
			l, n, err := readVarint(p, i)
			if err != nil {
				return err
			}
			if uint64(len(p)-n) < l {
				return errTruncated
			}
			i = n + int(l)
			fn(num, 0, p[n:i])
		case 1:
			i += 8
		case 5:
			i += 4
		default:
			return fmt.Errorf("bad wire type %d", tag&7)
		}
		if i > len(p) {
			return errTruncated
		}
	}
	return nil
}

func (m *EchoRequest) Unmarshal(p []byte) error {
	return fields(p, func(num int, v uint64, b []byte) {
		switch num {
		case 1:
			m.Data = append([]byte(nil), b...)
		case 2:
			m.SleepMs = int64(v)
		case 3:
			m.FailCode = int32(v)
		case 4:
			m.FailMessage = string(b)
		case 5:
			m.Count = uint32(v)
		}
	})
}

func (m *EchoResponse) Unmarshal(p []byte) error {
	return fields(p, func(num int, v uint64, b []byte) {
		switch num {
		case 1:
			m.Data = append([]byte(nil), b...)
		case 2:
			m.Metadata = append(m.Metadata, string(b))
		case 3:
			m.RemainingMs = int64(v)
		}
	})
}

type statusCode = codes.Code

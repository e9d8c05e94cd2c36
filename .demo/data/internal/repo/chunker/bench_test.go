package chunker

import (
	"bytes"
	"io"
	"testing"
)

func BenchmarkChunker(b *testing.B) {
	data := big64()
	tab := NewTable([32]byte{42})
	c := New(nil, DefaultParams(), tab)
	rd := bytes.NewReader(data)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	var chunks int
	for b.Loop() {
		rd.Reset(data)
		c.Reset(rd)
		for {
			_, err := c.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			chunks++
		}
	}
	b.ReportMetric(float64(len(data))/(float64(chunks)/float64(b.N)), "B/chunk")
}

func BenchmarkCut(b *testing.B) {
	data := big64()
	tab := NewTable([32]byte{42})
	p := DefaultParams()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		d := data
		for len(d) > 0 {
			d = d[tab.Cut(d, p):]
		}
	}
}

package chunker

import (
	"bytes"
	"io"
	"runtime"
	"testing"
	"time"
)

// reportCPUThroughput adds a "cpu-MB/s" metric computed from the CPU time of
// the benchmark's OS thread, which unlike the wall-clock MB/s does not count
// time the thread spent descheduled on a busy machine.
func reportCPUThroughput(b *testing.B, bytesPerOp int, cpu time.Duration) {
	if cpu > 0 {
		b.ReportMetric(float64(bytesPerOp)*float64(b.N)/cpu.Seconds()/1e6, "cpu-MB/s")
	}
}

func BenchmarkChunker(b *testing.B) {
	data := big64()
	tab := NewTable([32]byte{42})
	c := New(nil, DefaultParams(), tab)
	rd := bytes.NewReader(data)
	b.SetBytes(int64(len(data)))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var chunks int
	var cpu time.Duration
	for b.Loop() {
		t0 := threadCPUTime()
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
		cpu += threadCPUTime() - t0
	}
	reportCPUThroughput(b, len(data), cpu)
	b.ReportMetric(float64(len(data))/(float64(chunks)/float64(b.N)), "B/chunk")
}

func BenchmarkCut(b *testing.B) {
	data := big64()
	tab := NewTable([32]byte{42})
	p := DefaultParams()
	b.SetBytes(int64(len(data)))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var cpu time.Duration
	for b.Loop() {
		t0 := threadCPUTime()
		d := data
		for len(d) > 0 {
			d = d[tab.Cut(d, p):]
		}
		cpu += threadCPUTime() - t0
	}
	reportCPUThroughput(b, len(data), cpu)
}

package crypto

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"
)

// TestPrepareKDFMemory checks the assumption prepareKDFMemory rests on: an
// allocation of the same size right after it lands in the range it marked
// for huge pages.
func TestPrepareKDFMemory(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/mm/transparent_hugepage/enabled"); err != nil {
		t.Skip("no transparent huge pages here")
	}
	n := int(DefaultKDF.Memory) << 10
	prepareKDFMemory(n)
	b := make([]byte, n) // as argon2's make([]block, memory)
	addr := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	flags, err := vmFlags(addr + uintptr(n/2))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(" "+flags+" ", " hg ") {
		t.Fatalf("the allocation after prepareKDFMemory is not marked for huge pages (VmFlags: %s)", flags)
	}
}

// vmFlags returns the VmFlags line of the mapping that holds addr.
func vmFlags(addr uintptr) (string, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	in := false
	for sc.Scan() {
		line := sc.Text()
		// A mapping's first line starts with its range; the lines after
		// it start with a "Key:".
		if f := strings.Fields(line); len(f) > 0 && !strings.HasSuffix(f[0], ":") {
			var lo, hi uintptr
			if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err != nil {
				return "", fmt.Errorf("smaps line %q: %v", line, err)
			}
			in = lo <= addr && addr < hi
			continue
		}
		if in && strings.HasPrefix(line, "VmFlags:") {
			return strings.TrimSpace(strings.TrimPrefix(line, "VmFlags:")), nil
		}
	}
	return "", fmt.Errorf("no mapping holds %#x", addr)
}

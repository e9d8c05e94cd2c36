package crypto

import (
	"bytes"
	"errors"
	"testing"
)

func testKey(t testing.TB) *Key {
	t.Helper()
	k, err := NewKey(NewMasterKey())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func fixedKey(t testing.TB, b byte) *Key {
	t.Helper()
	var m MasterKey
	for i := range m.Encrypt {
		m.Encrypt[i] = b
		m.MAC[i] = b ^ 0x5a
	}
	k, err := NewKey(&m)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpenRoundTrip(t *testing.T) {
	k := testKey(t)
	for _, size := range []int{0, 1, 15, 16, 17, 1000, 1 << 16} {
		plain := bytes.Repeat([]byte{byte(size)}, size)
		sealed := k.Seal(nil, plain)
		if len(sealed) != size+Overhead {
			t.Fatalf("size %d: sealed length %d, want %d", size, len(sealed), size+Overhead)
		}
		got, err := k.Open(nil, sealed)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if !bytes.Equal(got, plain) {
			t.Fatalf("size %d: round trip differs", size)
		}
		// Appending to existing prefixes works for both operations.
		prefix := []byte("prefix")
		sealed2 := k.Seal(append([]byte(nil), prefix...), plain)
		if !bytes.HasPrefix(sealed2, prefix) {
			t.Fatalf("size %d: Seal clobbered dst", size)
		}
		got2, err := k.Open([]byte("dst:"), sealed2[len(prefix):])
		if err != nil || string(got2) != "dst:"+string(plain) {
			t.Fatalf("size %d: Open with dst = %q, %v", size, got2, err)
		}
	}
}

func TestSealUsesFreshNonces(t *testing.T) {
	k := testKey(t)
	a, b := k.Seal(nil, []byte("same")), k.Seal(nil, []byte("same"))
	if bytes.Equal(a, b) || bytes.Equal(a[:NonceSize], b[:NonceSize]) {
		t.Fatal("two seals of the same plaintext are identical: nonce reused")
	}
}

func TestSealDoesNotAliasDst(t *testing.T) {
	k := testKey(t)
	// dst with spare capacity: the result must still be correct.
	dst := make([]byte, 3, 1024)
	copy(dst, "abc")
	out := k.Seal(dst, []byte("hello"))
	if string(out[:3]) != "abc" {
		t.Fatal("prefix changed")
	}
	if got, err := k.Open(nil, out[3:]); err != nil || string(got) != "hello" {
		t.Fatalf("Open = %q, %v", got, err)
	}
}

func TestTamperDetection(t *testing.T) {
	k := testKey(t)
	sealed := k.Seal(nil, []byte("a small secret message"))
	for i := range sealed {
		for _, bit := range []byte{0x01, 0x80} {
			c := bytes.Clone(sealed)
			c[i] ^= bit
			if _, err := k.Open(nil, c); !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("flip %#x at byte %d of %d: err = %v, want ErrUnauthenticated", bit, i, len(sealed), err)
			}
		}
	}
	// Truncation and extension.
	for n := 0; n < len(sealed); n++ {
		if _, err := k.Open(nil, sealed[:n]); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("truncated to %d: err = %v", n, err)
		}
	}
	if _, err := k.Open(nil, append(bytes.Clone(sealed), 0)); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("extended: err = %v", err)
	}
	if _, err := k.Open(nil, nil); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("nil: err = %v", err)
	}
}

func TestWrongKeyFails(t *testing.T) {
	k1, k2 := testKey(t), testKey(t)
	sealed := k1.Seal(nil, []byte("for k1 only"))
	if _, err := k2.Open(nil, sealed); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("open with another key: err = %v", err)
	}
	// Same encryption key, different MAC key: sealing is unaffected by the MAC key.
	m := NewMasterKey()
	m2 := *m
	m2.MAC[0] ^= 1
	a, _ := NewKey(m)
	b, _ := NewKey(&m2)
	if _, err := b.Open(nil, a.Seal(nil, []byte("x"))); err != nil {
		t.Fatalf("MAC key must not affect sealing: %v", err)
	}
}

func TestBlobIDKeyed(t *testing.T) {
	k1, k2 := fixedKey(t, 1), fixedKey(t, 2)
	data := []byte("some chunk of data")
	id1, id2 := k1.BlobID(data), k2.BlobID(data)
	if id1 == id2 {
		t.Fatal("blob IDs under different keys are equal")
	}
	if id1 != fixedKey(t, 1).BlobID(data) {
		t.Fatal("blob ID is not deterministic for the same key")
	}
	if id1 == k1.BlobID([]byte("some chunk of datA")) {
		t.Fatal("different data, same ID")
	}
	if id1 == FileID(data) {
		t.Fatal("keyed blob ID equals the unkeyed file ID")
	}
	if id1.IsNull() {
		t.Fatal("null ID")
	}
	// The pooled hasher is reset between uses.
	for i := 0; i < 3; i++ {
		if k1.BlobID(data) != id1 {
			t.Fatal("BlobID changed on reuse of the pooled hasher")
		}
	}
}

func TestBlobIDConcurrent(t *testing.T) {
	k := fixedKey(t, 7)
	want := k.BlobID([]byte("x"))
	done := make(chan bool)
	for g := 0; g < 8; g++ {
		go func() {
			ok := true
			for i := 0; i < 200; i++ {
				ok = ok && k.BlobID([]byte("x")) == want
				k.BlobID(bytes.Repeat([]byte{byte(i)}, i))
			}
			done <- ok
		}()
	}
	for g := 0; g < 8; g++ {
		if !<-done {
			t.Fatal("concurrent BlobID gave a wrong result")
		}
	}
}

func TestFileID(t *testing.T) {
	a1, a2 := FileID([]byte("a")), FileID([]byte{'a'})
	if a1 != a2 || a1 == FileID([]byte("b")) {
		t.Fatal("FileID is not a function of the bytes")
	}
}

func TestDeriveKey(t *testing.T) {
	salt := bytes.Repeat([]byte{1}, 16)
	a, err := DeriveKey([]byte("pw"), salt, TestKDF)
	if err != nil {
		t.Fatal(err)
	}
	b, err := DeriveKey([]byte("pw"), salt, TestKDF)
	if err != nil || a != b {
		t.Fatalf("not deterministic: %x vs %x, %v", a, b, err)
	}
	if c, _ := DeriveKey([]byte("pW"), salt, TestKDF); c == a {
		t.Fatal("different password, same key")
	}
	salt2 := bytes.Clone(salt)
	salt2[15] ^= 1
	if c, _ := DeriveKey([]byte("pw"), salt2, TestKDF); c == a {
		t.Fatal("different salt, same key")
	}
	p := TestKDF
	p.Time++
	if c, _ := DeriveKey([]byte("pw"), salt, p); c == a {
		t.Fatal("different params, same key")
	}
	if _, err := DeriveKey([]byte("pw"), salt[:15], TestKDF); err == nil {
		t.Fatal("15-byte salt accepted")
	}
	if _, err := DeriveKey([]byte("pw"), nil, TestKDF); err == nil {
		t.Fatal("nil salt accepted")
	}
}

func TestKDFValidate(t *testing.T) {
	good := []KDFParams{
		TestKDF, DefaultKDF,
		{Time: 1, Memory: 8, Threads: 1},
		{Time: 100, Memory: 8, Threads: 255},
		{Time: 2, Memory: 1 << 20, Threads: 4},   // 1 GiB, t=2
		{Time: 32, Memory: 64 << 10, Threads: 2}, // 64 MiB, t=32
	}
	for _, p := range good {
		if err := p.Validate(); err != nil {
			t.Errorf("%+v: %v", p, err)
		}
	}
	bad := []KDFParams{
		{},
		{Time: 0, Memory: 64, Threads: 1},
		{Time: 1, Memory: 7, Threads: 1},
		{Time: 1, Memory: 64, Threads: 0},
		{Time: 101, Memory: 8, Threads: 1},
		{Time: 1e9, Memory: 64, Threads: 1},
		{Time: 1, Memory: 4 << 20, Threads: 1},       // 4 GiB: minutes and 4 GiB of RAM
		{Time: 100, Memory: 4 << 20, Threads: 1},     // the old limits' worst case: about half an hour
		{Time: 1, Memory: 1<<20 + 1, Threads: 1},     // just over 1 GiB
		{Time: 3, Memory: 1 << 20, Threads: 1},       // 3 GiB of passes
		{Time: 100, Memory: 64 << 10, Threads: 1},    // 6.25 GiB of passes
		{Time: 1 << 31, Memory: 1 << 31, Threads: 1}, // product overflows 32 bits
		{Time: 0xffffffff, Memory: 0xffffffff, Threads: 255},
	}
	for _, p := range bad {
		if err := p.Validate(); err == nil {
			t.Errorf("%+v accepted", p)
		}
		if _, err := DeriveKey([]byte("pw"), make([]byte, 16), p); err == nil {
			t.Errorf("DeriveKey with %+v accepted", p)
		}
	}
}

// FuzzOpen checks that Open never panics, fails on anything that was not sealed
// with the key, and opens what was.
func FuzzOpen(f *testing.F) {
	k := fixedKey(f, 3)
	f.Add([]byte{}, false)
	f.Add(make([]byte, Overhead), false)
	f.Add(k.Seal(nil, nil), false)
	f.Add(k.Seal(nil, []byte("hello, world")), false)
	f.Add([]byte("hello"), true)
	f.Add(bytes.Repeat([]byte{0xff}, 100), true)
	f.Fuzz(func(t *testing.T, data []byte, seal bool) {
		if seal {
			sealed := k.Seal(nil, data)
			got, err := k.Open(nil, sealed)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("round trip: %v", err)
			}
			return
		}
		got, err := k.Open(nil, data)
		if err != nil {
			if !errors.Is(err, ErrUnauthenticated) || got != nil {
				t.Fatalf("Open = %q, %v", got, err)
			}
			return
		}
		// Only a real seal opens: the fuzzer cannot forge a GCM tag, but the
		// seeds hold sealed messages (and mutations that keep them whole).
		if len(got) != len(data)-Overhead {
			t.Fatalf("opened %d bytes from %d sealed", len(got), len(data))
		}
		if _, err := k.Open(nil, append(bytes.Clone(data[:len(data)-1]), data[len(data)-1]^1)); err == nil {
			t.Fatal("tampered tag opened")
		}
	})
}

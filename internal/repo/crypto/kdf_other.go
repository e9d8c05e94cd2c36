//go:build !linux

package crypto

func prepareKDFMemory(int) {}

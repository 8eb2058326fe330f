// Package hsmtest holds fault injection for tests of code that uses a
// keystore: a real keystore wrapped so that a test can make it fail.
package hsmtest

import (
	"fmt"
	"sync/atomic"

	"github.com/coffer-kms/coffer/hsmwrap"
)

// Failing wraps a real keystore and fails like a lost HSM while Broken is
// set: SelfTest, Seal and Open return hsmwrap.ErrUnavailable. Everything
// else goes to the keystore it wraps. It does not pass on optional
// interfaces such as hsmwrap.Signer.
type Failing struct {
	hsmwrap.Keystore
	Broken *atomic.Bool
}

func (f Failing) err() error {
	if f.Broken.Load() {
		return fmt.Errorf("%w: device removed (test)", hsmwrap.ErrUnavailable)
	}
	return nil
}

// SelfTest fails while broken.
func (f Failing) SelfTest() error {
	if err := f.err(); err != nil {
		return err
	}
	return f.Keystore.SelfTest()
}

// Open fails while broken.
func (f Failing) Open(id hsmwrap.KEKID, ct, aad []byte) ([]byte, error) {
	if err := f.err(); err != nil {
		return nil, err
	}
	return f.Keystore.Open(id, ct, aad)
}

// Seal fails while broken.
func (f Failing) Seal(id hsmwrap.KEKID, pt, aad []byte) ([]byte, error) {
	if err := f.err(); err != nil {
		return nil, err
	}
	return f.Keystore.Seal(id, pt, aad)
}

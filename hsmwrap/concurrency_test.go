package hsmwrap

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// exerciseConcurrently is the concurrency check every Keystore passes: many
// goroutines seal under ids on ks and open on both ks and peer (which holds
// the same KEKs, loaded from wrapped copies), while others generate and load
// new KEKs and run the self-test. Then ks is closed under load: every call
// either succeeds or fails with ErrClosed. Run it with -race.
func exerciseConcurrently(t *testing.T, ks, peer Keystore, ids []KEKID, rounds, newKEKs, selfTests int) {
	t.Helper()
	const workers = 8
	var wg sync.WaitGroup
	errc := make(chan error, workers+2)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				id := ids[(w+i)%len(ids)]
				pt := []byte(fmt.Sprintf("worker %d round %d", w, i))
				aad := []byte(id.String())
				ct, err := ks.Seal(id, pt, aad)
				if err != nil {
					errc <- err
					return
				}
				for _, k := range []Keystore{ks, peer} {
					got, err := k.Open(id, ct, aad)
					if err != nil || !bytes.Equal(got, pt) {
						errc <- fmt.Errorf("open %s: %v", id, err)
						return
					}
				}
			}
		})
	}
	wg.Go(func() {
		for i := range newKEKs {
			id := KEKID{Policy: fmt.Sprintf("p%d", i), Version: 1}
			w, err := peer.GenerateKEK(id)
			if err == nil {
				err = ks.LoadKEK(id, w)
			}
			if err == nil {
				err = ks.LoadKEK(id, w) // no-op
			}
			if err != nil {
				errc <- err
				return
			}
		}
	})
	wg.Go(func() {
		for range selfTests {
			if err := ks.SelfTest(); err != nil {
				errc <- err
				return
			}
		}
	})
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var busy, warm sync.WaitGroup
	warm.Add(workers)
	for range workers {
		busy.Go(func() {
			var once sync.Once
			defer once.Do(warm.Done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				ct, err := ks.Seal(ids[0], []byte("m"), nil)
				if err == nil {
					_, err = ks.Open(ids[0], ct, nil)
				}
				if err != nil && !errors.Is(err, ErrClosed) {
					t.Errorf("during Close: %v", err)
					return
				}
				once.Do(warm.Done)
			}
		})
	}
	warm.Wait() // every worker is in its loop
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	busy.Wait()
}

package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

// benchTarget is what a bench drives: the cluster through the client, or a
// fake in tests.
type benchTarget interface {
	generate(ctx context.Context) (gkid string, err error)
	get(ctx context.Context, gkid string) error
	encrypt(ctx context.Context, gkid string, plaintext []byte) (ciphertext []byte, err error)
	decrypt(ctx context.Context, ciphertext []byte) error
	datakey(ctx context.Context, gkid string) error
	// cryptoBatch is one batch call of op: encrypt plaintext under each of
	// gkids, decrypt each of ciphertexts, or wrap a data key under each of
	// gkids. It fails if any item fails.
	cryptoBatch(ctx context.Context, op opKind, gkids []string, ciphertexts [][]byte, plaintext []byte) error
}

// clientTarget drives the cluster through the shared client.
type clientTarget struct {
	c                *client.Client
	policy, resource string
	alg              cofferv1.Algorithm
	cons             cofferv1.Consistency
}

func (t *clientTarget) generate(ctx context.Context) (string, error) {
	md, err := t.c.Generate(ctx, t.policy, t.resource, t.alg)
	if err != nil {
		return "", err
	}
	return md.GetGkid(), nil
}

func (t *clientTarget) get(ctx context.Context, gkid string) error {
	resp, err := t.c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gkid, Consistency: t.cons})
	if err != nil {
		return err
	}
	clear(resp.Material)
	return nil
}

func (t *clientTarget) encrypt(ctx context.Context, gkid string, plaintext []byte) ([]byte, error) {
	resp, err := t.c.Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: gkid, Plaintext: plaintext, Consistency: t.cons})
	if err != nil {
		return nil, err
	}
	return resp.GetCiphertext(), nil
}

func (t *clientTarget) decrypt(ctx context.Context, ciphertext []byte) error {
	resp, err := t.c.Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: ciphertext, Consistency: t.cons})
	if err != nil {
		return err
	}
	clear(resp.Plaintext)
	return nil
}

func (t *clientTarget) datakey(ctx context.Context, gkid string) error {
	resp, err := t.c.GenerateDataKey(ctx, &cofferv1.GenerateDataKeyRequest{Gkid: gkid, Consistency: t.cons})
	if err != nil {
		return err
	}
	clear(resp.Plaintext)
	return nil
}

func (t *clientTarget) cryptoBatch(ctx context.Context, op opKind, gkids []string, ciphertexts [][]byte, plaintext []byte) error {
	var errs []*cofferv1.ItemError
	switch op {
	case opEncrypt:
		req := &cofferv1.EncryptBatchRequest{Consistency: t.cons}
		for _, g := range gkids {
			req.Items = append(req.Items, &cofferv1.EncryptRequest{Gkid: g, Plaintext: plaintext})
		}
		resp, err := t.c.EncryptBatch(ctx, req)
		if err != nil {
			return err
		}
		for _, r := range resp.GetResults() {
			errs = append(errs, r.GetError())
		}
	case opDecrypt:
		req := &cofferv1.DecryptBatchRequest{Consistency: t.cons}
		for _, ct := range ciphertexts {
			req.Items = append(req.Items, &cofferv1.DecryptRequest{Ciphertext: ct})
		}
		resp, err := t.c.DecryptBatch(ctx, req)
		if err != nil {
			return err
		}
		for _, r := range resp.GetResults() {
			clear(r.GetResponse().GetPlaintext())
			errs = append(errs, r.GetError())
		}
	case opDataKey:
		req := &cofferv1.GenerateDataKeyBatchRequest{Consistency: t.cons}
		for _, g := range gkids {
			req.Items = append(req.Items, &cofferv1.GenerateDataKeyRequest{Gkid: g})
		}
		resp, err := t.c.GenerateDataKeyBatch(ctx, req)
		if err != nil {
			return err
		}
		for _, r := range resp.GetResults() {
			clear(r.GetResponse().GetPlaintext())
			errs = append(errs, r.GetError())
		}
	default:
		return fmt.Errorf("no batch form of %s", op)
	}
	for _, e := range errs {
		if e != nil {
			return status.Error(codes.Code(e.GetCode()), e.GetMessage())
		}
	}
	return nil
}

// pregenerate generates n keys with up to parallel requests in flight and
// returns their GKIDs. The first failure stops it.
func pregenerate(ctx context.Context, t benchTarget, n, parallel int, opTimeout time.Duration) ([]string, error) {
	gkids := make([]string, n)
	err := inParallel(ctx, n, parallel, opTimeout, func(ctx context.Context, i int) error {
		gkid, err := t.generate(ctx)
		gkids[i] = gkid
		return err
	})
	if err != nil {
		return nil, err
	}
	return gkids, nil
}

// preencrypt encrypts plaintext under each of gkids with up to parallel
// requests in flight and returns the ciphertexts, in the order of gkids.
// The first failure stops it.
func preencrypt(ctx context.Context, t benchTarget, gkids []string, plaintext []byte, parallel int, opTimeout time.Duration) ([][]byte, error) {
	cts := make([][]byte, len(gkids))
	err := inParallel(ctx, len(gkids), parallel, opTimeout, func(ctx context.Context, i int) error {
		ct, err := t.encrypt(ctx, gkids[i], plaintext)
		cts[i] = ct
		return err
	})
	if err != nil {
		return nil, err
	}
	return cts, nil
}

// inParallel calls op for i from 0 to n-1 with up to parallel calls in
// flight, each with a context bounded by opTimeout. The first failure stops
// it: no call starts after it, and it is returned.
func inParallel(ctx context.Context, n, parallel int, opTimeout time.Duration, op func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(parallel, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				octx, ocancel := context.WithTimeout(ctx, opTimeout)
				err := op(octx, i)
				ocancel()
				if err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

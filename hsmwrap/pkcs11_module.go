package hsmwrap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
)

// This file holds what the PKCS#11 keystore and the key ceremony share: the
// process-wide registry of loaded modules, the one mapping from PKCS#11
// return values to this package's errors, token lookup, PIN handling, and the
// object templates.

// Return values the pinned miekg/pkcs11 version has no constant for.
const (
	ckrActionProhibited  = 0x1B // PKCS#11 v2.40
	ckrAEADDecryptFailed = 0x35 // PKCS#11 v3.0
)

// p11Module is one loaded PKCS#11 library. A library may be initialised only
// once per process, and C_Finalize ends every user's sessions, so modules are
// shared: the first user loads and initialises, the last one finalises.
type p11Module struct {
	key  string
	ctx  *pkcs11.Ctx
	refs int
	// owned is set when this process's C_Initialize succeeded; when some
	// other code had already initialised the library, it is theirs to
	// finalise.
	owned bool
}

var p11Modules = struct {
	sync.Mutex
	m map[string]*p11Module
}{m: make(map[string]*p11Module)}

// loadModule returns the shared, initialised module at path.
func loadModule(path string) (*p11Module, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: pkcs11: no module configured", ErrInvalidArgument)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%w: pkcs11: module %s: %w", ErrUnavailable, path, err)
	}
	key := path
	if resolved, err := filepath.EvalSymlinks(path); err == nil {
		key = resolved
	}
	p11Modules.Lock()
	defer p11Modules.Unlock()
	if m := p11Modules.m[key]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("%w: pkcs11: cannot load module %s (not a PKCS#11 library, or its dependencies are missing)", ErrUnavailable, path)
	}
	owned := true
	if err := ctx.Initialize(); err != nil {
		if rvOf(err) != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			ctx.Destroy()
			return nil, mapRV("C_Initialize", callPlain, err)
		}
		owned = false
	}
	m := &p11Module{key: key, ctx: ctx, refs: 1, owned: owned}
	p11Modules.m[key] = m
	return m, nil
}

// release drops one reference; the last one finalises and unloads.
func (m *p11Module) release() {
	p11Modules.Lock()
	defer p11Modules.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(p11Modules.m, m.key)
	if m.owned {
		m.ctx.Finalize()
	}
	m.ctx.Destroy()
}

// callKind says what a failing call was doing, which decides what some
// return values mean.
type callKind int

const (
	// callPlain: any failure is the device's (or a bug).
	callPlain callKind = iota
	// callVerify: the call checks authenticity (C_Decrypt under GCM,
	// C_Verify, C_UnwrapKey of untrusted input), so some failures mean the
	// input is not authentic.
	callVerify
)

// errClass is what a PKCS#11 failure means to the keystore.
type errClass int

const (
	// classDevice: the device failed the call (ErrUnavailable). The session
	// is discarded; nothing else is retried.
	classDevice errClass = iota
	// classLost: the session, the login or the token is gone
	// (ErrUnavailable). The keystore re-establishes its sessions and KEK
	// objects and retries the operation once.
	classLost
	// classIntegrity: the input did not authenticate (ErrIntegrity).
	classIntegrity
	// classAmbiguous: a generic failure of a verifying call. SoftHSM2
	// reports a GCM tag or key-wrap check failure as CKR_GENERAL_ERROR, so
	// this is ErrIntegrity unless a probe finds the session dead.
	classAmbiguous
	// classPIN: the token refused the PIN (ErrSealed).
	classPIN
)

// classify is the one place PKCS#11 return values are given a meaning.
func classify(rv uint, kind callKind) errClass {
	switch rv {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_DEVICE_ERROR,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED,
		pkcs11.CKR_SLOT_ID_INVALID, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED,
		pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_OBJECT_HANDLE_INVALID,
		pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID, pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID:
		return classLost
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE,
		pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
		return classPIN
	}
	if kind == callVerify {
		switch rv {
		case pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
			pkcs11.CKR_SIGNATURE_INVALID, pkcs11.CKR_SIGNATURE_LEN_RANGE,
			pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE,
			pkcs11.CKR_DATA_LEN_RANGE, ckrAEADDecryptFailed:
			return classIntegrity
		case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_FUNCTION_FAILED:
			return classAmbiguous
		}
	}
	return classDevice
}

// p11Error is a failed PKCS#11 call, classified. It unwraps to the
// package's sentinel for its class and prints the call and the return value,
// never arguments.
type p11Error struct {
	op    string // "C_Decrypt"
	rv    uint   // 0 when the failure was not a return value
	class errClass
	cause error // a non-PKCS#11 failure (rv == 0)
}

func (e *p11Error) sentinel() error {
	switch e.class {
	case classIntegrity, classAmbiguous:
		return ErrIntegrity
	case classPIN:
		return ErrSealed
	}
	return ErrUnavailable
}

func (e *p11Error) Error() string {
	detail := rvName(e.rv)
	if e.rv == 0 && e.cause != nil {
		detail = e.cause.Error()
	}
	if e.class == classPIN {
		return fmt.Sprintf("%v: pkcs11: the token refused the PIN (%s: %s)", e.sentinel(), e.op, detail)
	}
	return fmt.Sprintf("%v: pkcs11: %s: %s", e.sentinel(), e.op, detail)
}

func (e *p11Error) Unwrap() error { return e.sentinel() }

// mapRV turns an error from a miekg/pkcs11 call into a *p11Error (nil stays
// nil).
func mapRV(op string, kind callKind, err error) error {
	if err == nil {
		return nil
	}
	var rv pkcs11.Error
	if !errors.As(err, &rv) {
		return &p11Error{op: op, class: classDevice, cause: err}
	}
	return &p11Error{op: op, rv: uint(rv), class: classify(uint(rv), kind)}
}

// errClassOf returns the class of a *p11Error in err's chain.
func errClassOf(err error) (errClass, bool) {
	var pe *p11Error
	if errors.As(err, &pe) {
		return pe.class, true
	}
	return 0, false
}

func rvOf(err error) uint {
	var rv pkcs11.Error
	if errors.As(err, &rv) {
		return uint(rv)
	}
	return 0
}

func rvName(rv uint) string {
	switch rv {
	case ckrActionProhibited:
		return "CKR_ACTION_PROHIBITED"
	case ckrAEADDecryptFailed:
		return "CKR_AEAD_DECRYPT_FAILED"
	}
	s := strings.TrimPrefix(pkcs11.Error(rv).Error(), "pkcs11: ")
	if strings.HasSuffix(s, ": ") {
		s = strings.TrimSuffix(s, ": ")
	}
	return s
}

// findSlot returns the slot of the configured token: the configured slot id,
// or the one slot whose token carries the configured label. Called again
// after a device loss, since a re-inserted token may come back in another
// slot.
func findSlot(ctx *pkcs11.Ctx, cfg PKCS11Config) (uint, error) {
	if cfg.Slot != nil {
		info, err := ctx.GetTokenInfo(*cfg.Slot)
		if err != nil {
			return 0, mapRV(fmt.Sprintf("C_GetTokenInfo(slot %d)", *cfg.Slot), callPlain, err)
		}
		if info.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			return 0, fmt.Errorf("%w: pkcs11: the token in slot %d is not initialised", ErrUnavailable, *cfg.Slot)
		}
		return *cfg.Slot, nil
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return 0, mapRV("C_GetSlotList", callPlain, err)
	}
	var found []uint
	for _, slot := range slots {
		info, err := ctx.GetTokenInfo(slot)
		if err != nil {
			continue // removed between the two calls
		}
		if info.Label == cfg.TokenLabel && info.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 {
			found = append(found, slot)
		}
	}
	switch len(found) {
	case 0:
		return 0, fmt.Errorf("%w: pkcs11: no token labelled %q among %d slots with a token present", ErrUnavailable, cfg.TokenLabel, len(slots))
	case 1:
		return found[0], nil
	}
	return 0, fmt.Errorf("%w: pkcs11: %d tokens are labelled %q (slots %v); name one by slot", ErrUnavailable, len(found), cfg.TokenLabel, found)
}

// readPIN reads a PIN from a file (one trailing newline removed) or from the
// environment variable named env. Errors name the source, never the value,
// and wrap ErrSealed as a missing passphrase does for the software keystore.
func readPIN(file, env, what string) ([]byte, error) {
	switch {
	case file != "":
		return readSecretFile(file, maxPINSize, what)
	case env != "":
		v, ok := os.LookupEnv(env)
		if !ok || v == "" {
			return nil, fmt.Errorf("%w: environment variable %s (%s) is not set or empty", ErrSealed, env, what)
		}
		if len(v) > maxPINSize {
			return nil, fmt.Errorf("%w: environment variable %s (%s) is longer than %d bytes", ErrSealed, env, what, maxPINSize)
		}
		return []byte(v), nil
	}
	return nil, fmt.Errorf("%w: no %s configured", ErrInvalidArgument, what)
}

// login logs the session's application in as userType with the PIN read
// from file or env. Already being logged in (login state is per token and
// application, shared by all its sessions) counts as success. The PIN is
// cleared after the call; the copy the C call needs is best effort, as Go
// strings cannot be cleared.
func login(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, userType uint, file, env, what string) error {
	pin, err := readPIN(file, env, what)
	if err != nil {
		return err
	}
	err = ctx.Login(s, userType, string(pin))
	clear(pin)
	if err != nil && rvOf(err) != pkcs11.CKR_USER_ALREADY_LOGGED_IN {
		return mapRV("C_Login", callPlain, err)
	}
	return nil
}

// findObjects returns the handles of the objects matching template, at most
// limit of them.
func findObjects(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, template []*pkcs11.Attribute, limit int) ([]pkcs11.ObjectHandle, error) {
	if err := ctx.FindObjectsInit(s, template); err != nil {
		return nil, mapRV("C_FindObjectsInit", callPlain, err)
	}
	hs, _, err := ctx.FindObjects(s, limit)
	ferr := ctx.FindObjectsFinal(s)
	if err != nil {
		return nil, mapRV("C_FindObjects", callPlain, err)
	}
	if ferr != nil {
		return nil, mapRV("C_FindObjectsFinal", callPlain, ferr)
	}
	return hs, nil
}

// findMasterKey returns the handle of the master key: the one AES secret
// key token object labelled label. It checks the attributes the keystore
// relies on and refuses a key that could be extracted other than under a
// trusted key.
func findMasterKey(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string) (pkcs11.ObjectHandle, error) {
	hs, err := findObjects(ctx, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, 2)
	if err != nil {
		return 0, err
	}
	switch len(hs) {
	case 0:
		return 0, fmt.Errorf("%w: pkcs11: the token holds no master key labelled %q (create one with `cofferd keystore init-master` or import one)", ErrUnavailable, label)
	case 1:
	default:
		return 0, fmt.Errorf("%w: pkcs11: the token holds more than one secret key labelled %q", ErrUnavailable, label)
	}
	h := hs[0]
	attrs, err := ctx.GetAttributeValue(s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, nil),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, nil),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, nil),
	})
	if err != nil {
		return 0, mapRV("C_GetAttributeValue(master key)", callPlain, err)
	}
	v := make(map[uint][]byte, len(attrs))
	for _, a := range attrs {
		v[a.Type] = a.Value
	}
	isTrue := func(t uint) bool { b := v[t]; return len(b) == 1 && b[0] != 0 }
	bad := func(why string) error {
		return fmt.Errorf("%w: pkcs11: the master key labelled %q %s; create it with `cofferd keystore init-master`", ErrUnavailable, label, why)
	}
	switch {
	case ulongAttr(v[pkcs11.CKA_KEY_TYPE]) != pkcs11.CKK_AES:
		return 0, bad("is not an AES key")
	case !isTrue(pkcs11.CKA_SENSITIVE):
		return 0, bad("is not CKA_SENSITIVE")
	case isTrue(pkcs11.CKA_EXTRACTABLE) && !isTrue(pkcs11.CKA_WRAP_WITH_TRUSTED):
		return 0, bad("is extractable without CKA_WRAP_WITH_TRUSTED")
	case !isTrue(pkcs11.CKA_WRAP) || !isTrue(pkcs11.CKA_UNWRAP) || !isTrue(pkcs11.CKA_SIGN) || !isTrue(pkcs11.CKA_VERIFY):
		return 0, bad("lacks one of CKA_WRAP, CKA_UNWRAP, CKA_SIGN, CKA_VERIFY")
	}
	return h, nil
}

// ulongAttr decodes a CK_ULONG attribute value (host byte order, as the
// library returns it).
func ulongAttr(b []byte) uint {
	var v uint
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint(b[i])
	}
	return v
}

// ulongBytes encodes a CK_ULONG the way miekg/pkcs11 encodes attribute
// values (little-endian, 8 bytes), for array attributes it cannot build.
func ulongBytes(vs ...uint) []byte {
	b := make([]byte, 0, 8*len(vs))
	for _, v := range vs {
		for i := range 8 {
			b = append(b, byte(v>>(8*i)))
		}
	}
	return b
}

// masterKeyTemplate is the template of the master key, generated by
// InitMasterKey or unwrapped by ImportMasterKey. See DESIGN.md for why each
// attribute is set. CKA_MODIFIABLE comes last: SoftHSM2 applies a template
// in order and refuses attributes after it.
func masterKeyTemplate(label string, generate bool) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
	}
	if generate {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, masterKeyLen))
	}
	return append(t,
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, ulongBytes(pkcs11.CKM_AES_KEY_WRAP_PAD, pkcs11.CKM_AES_CMAC)),
		pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
	)
}

// kekGenerateTemplate is the template of a KEK while GenerateKEK wraps it:
// a session object that can do nothing but be wrapped.
func kekGenerateTemplate() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, kekLen),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	}
}

// kekLoadTemplate is the template of a loaded KEK: a session object,
// sensitive, not extractable, good for AES-GCM encrypt and decrypt only.
func kekLoadTemplate() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, ulongBytes(pkcs11.CKM_AES_GCM)),
		pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
	}
}

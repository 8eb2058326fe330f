package escrow

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/crypto/argon2"
)

// PEM block types.
const (
	blockPublic    = "PUBLIC KEY"
	blockPrivate   = "PRIVATE KEY"
	blockEncrypted = "COFFER ENCRYPTED PRIVATE KEY"
)

// argon2id parameters for passphrase-protected key files.
const (
	kdfTime    = 3
	kdfMemory  = 64 * 1024 // KiB
	kdfThreads = 2
	saltLen    = 16
	maxKeyFile = 64 << 10
)

// GenerateKey creates an RSA escrow key pair of the given size (>= 3072).
func GenerateKey(bits int) (*rsa.PrivateKey, error) {
	if bits < MinBits || bits > 8192 {
		return nil, fmt.Errorf("%w: bits must be %d..8192", ErrInvalidOption, MinBits)
	}
	return rsa.GenerateKey(rand.Reader, bits)
}

// WriteKeyPair writes PREFIX.pub (PKIX PEM, 0644) and PREFIX.key (PKCS#8
// PEM, 0600; encrypted when passphrase is not empty). It refuses to
// overwrite either file.
func WriteKeyPair(prefix string, priv *rsa.PrivateKey, passphrase []byte) (pubPath, keyPath string, err error) {
	pubPath, keyPath = prefix+".pub", prefix+".key"
	for _, p := range []string{pubPath, keyPath} {
		if _, err := os.Stat(p); err == nil {
			return "", "", fmt.Errorf("%w: %s", ErrExists, p)
		}
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return "", "", err
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", "", err
	}
	defer clear(privDER)
	block := &pem.Block{Type: blockPrivate, Bytes: privDER}
	if len(passphrase) > 0 {
		if block, err = sealBlock(privDER, passphrase); err != nil {
			return "", "", err
		}
	}
	if err := writeNew(keyPath, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", "", err
	}
	if err := writeNew(pubPath, pem.EncodeToMemory(&pem.Block{Type: blockPublic, Bytes: pubDER}), 0o644); err != nil {
		return "", "", err
	}
	return pubPath, keyPath, nil
}

func writeNew(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %s", ErrExists, path)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// sealBlock encrypts a PKCS#8 DER key: argon2id(passphrase, salt) → AES-256-GCM,
// output salt || nonce || ciphertext, with the KDF parameters in the PEM
// headers (which are also the GCM associated data).
func sealBlock(der, passphrase []byte) (*pem.Block, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	headers := map[string]string{"KDF": "argon2id", "Params": fmt.Sprintf("t=%d,m=%d,p=%d", kdfTime, kdfMemory, kdfThreads)}
	aead, err := kdfAEAD(passphrase, salt, kdfTime, kdfMemory, kdfThreads)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := append(append(append([]byte{}, salt...), nonce...), aead.Seal(nil, nonce, der, headerAAD(headers))...)
	return &pem.Block{Type: blockEncrypted, Headers: headers, Bytes: out}, nil
}

func headerAAD(h map[string]string) []byte {
	return []byte("coffer-escrow-key-v1\x00" + h["KDF"] + "\x00" + h["Params"])
}

func kdfAEAD(passphrase, salt []byte, t, m uint32, p uint8) (cipher.AEAD, error) {
	key := argon2.IDKey(passphrase, salt, t, m, p, 32)
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// ReadPublicKey reads a PKIX PEM public key file and returns its DER, after
// checking it is an acceptable escrow key.
func ReadPublicKey(path string) ([]byte, error) {
	data, err := readLimited(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != blockPublic {
		return nil, fmt.Errorf("%w: %s is not a PEM %q block", ErrBadKey, path, blockPublic)
	}
	if _, err := ParsePublicKey(b.Bytes); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b.Bytes, nil
}

// ReadPrivateKey reads an escrow private key file, decrypting it with
// passphrase when it is encrypted.
func ReadPrivateKey(path string, passphrase []byte) (*rsa.PrivateKey, error) {
	data, err := readLimited(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("%w: %s holds no PEM block", ErrBadKey, path)
	}
	der := b.Bytes
	switch b.Type {
	case blockPrivate:
	case blockEncrypted:
		if len(passphrase) == 0 {
			return nil, fmt.Errorf("%w: %s is encrypted; a passphrase is required", ErrPassphrase, path)
		}
		var t, m uint32
		var p uint8
		if b.Headers["KDF"] != "argon2id" {
			return nil, fmt.Errorf("%w: unknown KDF %q", ErrBadKey, b.Headers["KDF"])
		}
		if _, err := fmt.Sscanf(b.Headers["Params"], "t=%d,m=%d,p=%d", &t, &m, &p); err != nil || t == 0 || t > 10 || m == 0 || m > 1<<20 || p == 0 {
			return nil, fmt.Errorf("%w: bad KDF parameters", ErrBadKey)
		}
		aead, err := kdfAEAD(passphrase, der[:min(saltLen, len(der))], t, m, p)
		if err != nil {
			return nil, err
		}
		if len(der) < saltLen+aead.NonceSize()+aead.Overhead() {
			return nil, ErrPassphrase
		}
		nonce := der[saltLen : saltLen+aead.NonceSize()]
		plain, err := aead.Open(nil, nonce, der[saltLen+aead.NonceSize():], headerAAD(b.Headers))
		if err != nil {
			return nil, ErrPassphrase
		}
		defer clear(plain)
		der = plain
	default:
		return nil, fmt.Errorf("%w: %s holds a %q block", ErrBadKey, path, b.Type)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok || rk.N.BitLen() < MinBits {
		return nil, ErrWeakKey
	}
	return rk, nil
}

func readLimited(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Size() > maxKeyFile {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrBadKey, path, maxKeyFile)
	}
	return os.ReadFile(path)
}

package relaytest

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// CA is a certificate authority made with the openssl command, not with
// Go: peers whose certificates postern verifies through the system roots
// (an MTA-STS policy server, an MX under WebPKI) get theirs from it, and
// the process that verifies trusts it through SSL_CERT_FILE, which Go's
// crypto/x509 reads on Linux instead of the system bundle. Its key is
// ECDSA P-256, its certificates last two days.
type CA struct {
	// CertFile is the CA certificate (PEM): the value for SSL_CERT_FILE.
	CertFile string
	dir      string
	keyFile  string

	mu     sync.Mutex
	serial int
}

// StartCA makes a CA in dir with openssl.
func StartCA(dir string) (*CA, error) {
	ca := &CA{dir: dir, CertFile: filepath.Join(dir, "ca.pem"), keyFile: filepath.Join(dir, "ca.key")}
	err := openssl(dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", ca.keyFile, "-out", ca.CertFile, "-days", "2", "-subj", "/CN=postern test CA",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
	if err != nil {
		return nil, err
	}
	return ca, nil
}

// NewCA makes a CA in a temporary directory of t.
func NewCA(t testing.TB) *CA {
	t.Helper()
	ca, err := StartCA(t.TempDir())
	if err != nil {
		t.Fatalf("relaytest: %v", err)
	}
	return ca
}

// IssueFiles issues a server certificate for names (DNS names, or IP
// addresses) and returns its certificate and key files. With expired set
// the certificate's validity ended a day ago.
func (ca *CA) IssueFiles(expired bool, names ...string) (certFile, keyFile string, err error) {
	ca.mu.Lock()
	ca.serial++
	n := ca.serial
	ca.mu.Unlock()
	base := filepath.Join(ca.dir, fmt.Sprintf("leaf%d", n))
	certFile, keyFile = base+".pem", base+".key"
	var san []string
	for _, name := range names {
		if net.ParseIP(name) != nil {
			san = append(san, "IP:"+name)
		} else {
			san = append(san, "DNS:"+name)
		}
	}
	ext := base + ".ext"
	if err := os.WriteFile(ext, []byte("subjectAltName="+strings.Join(san, ",")+"\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n"), 0o600); err != nil {
		return "", "", err
	}
	if err := openssl(ca.dir, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", keyFile, "-out", base+".csr", "-subj", "/CN="+names[0]); err != nil {
		return "", "", err
	}
	args := []string{"x509", "-req", "-in", base + ".csr", "-CA", ca.CertFile, "-CAkey", ca.keyFile,
		"-set_serial", fmt.Sprint(1000 + n), "-out", certFile, "-extfile", ext}
	if expired {
		// openssl 3.0's x509 cannot set the start date; -days -1 puts
		// the end a day before now (and before the start), which every
		// verifier reads as expired.
		args = append(args, "-days", "-1")
	} else {
		args = append(args, "-days", "1")
	}
	if err := openssl(ca.dir, args...); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// Issue is IssueFiles as a tls.Certificate, failing t on error.
func (ca *CA) Issue(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	certFile, keyFile, err := ca.IssueFiles(false, names...)
	if err != nil {
		t.Fatalf("relaytest: %v", err)
	}
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatalf("relaytest: %v", err)
	}
	return c
}

func openssl(dir string, args ...string) error {
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("openssl %s: %v\n%s", args[0], err, out)
	}
	return nil
}

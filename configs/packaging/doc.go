// Package packaging holds no Go code: the directory is postern's Debian
// package (nfpm.yaml and its maintainer scripts, built by `make
// package`), and its test installs that package on the machine, runs
// postern the way the systemd unit does, sends a message through the
// installed sendmail and purges the package again.
package packaging

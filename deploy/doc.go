// Package deploy holds no code: it is the sample production deployment of
// one node (cofferd.json, the systemd unit cofferd.service, README.md that
// explains every setting) and the Vagrant lab's scripts (vagrant/). Its
// tests load the sample config as strictly as `cofferd serve` does, check
// that it is a production config (no development files, pprof off, a
// management metrics address, WAN timings, five voters), that every setting
// is present and explained, and that systemd accepts the unit.
package deploy

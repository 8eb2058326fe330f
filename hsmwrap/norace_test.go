//go:build !race

package hsmwrap

const raceEnabled = false

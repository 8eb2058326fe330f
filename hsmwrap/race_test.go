//go:build race

package hsmwrap

const raceEnabled = true

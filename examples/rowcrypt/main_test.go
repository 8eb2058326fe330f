package main

import (
	"bytes"
	"encoding/csv"
	"slices"
	"testing"
)

// The sample table has a header row, ten rows and the column run encrypts
// by default, with a value in every row.
func TestSampleCSV(t *testing.T) {
	rows, err := csv.NewReader(bytes.NewReader(sampleCSV)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	col := slices.Index(rows[0], "card_number")
	if len(rows) != 11 || col < 0 {
		t.Fatalf("%d rows, card_number at %d", len(rows), col)
	}
	for i, row := range rows[1:] {
		if row[col] == "" {
			t.Fatalf("row %d has no card number", i+1)
		}
	}
}

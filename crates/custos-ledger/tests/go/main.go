// Interoperability check: Go's golang.org/x/mod/sumdb/note and sumdb/tlog
// verify Custos checkpoints and proofs unchanged.
//
// Usage: go run main.go VECTORS.json   (GOPATH mode with Debian's golang-golang-x-mod-dev)
package main

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type inclusion struct {
	Index       int64    `json:"index"`
	Size        int64    `json:"size"`
	Root        string   `json:"root"`
	LeafHash    string   `json:"leaf_hash"`
	Proof       []string `json:"proof"`
	EntryBase64 string   `json:"entry_base64"`
}

type consistency struct {
	OldSize int64    `json:"old_size"`
	NewSize int64    `json:"new_size"`
	OldRoot string   `json:"old_root"`
	NewRoot string   `json:"new_root"`
	Proof   []string `json:"proof"`
}

type vectors struct {
	Vkey        string        `json:"vkey"`
	Checkpoint  string        `json:"checkpoint"`
	Inclusion   []inclusion   `json:"inclusion"`
	Consistency []consistency `json:"consistency"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go verifier: "+format+"\n", args...)
	os.Exit(1)
}

func hash(s string) tlog.Hash {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != tlog.HashSize {
		fail("bad hash %q", s)
	}
	var h tlog.Hash
	copy(h[:], b)
	return h
}

func hashes(list []string) []tlog.Hash {
	out := make([]tlog.Hash, len(list))
	for i, s := range list {
		out[i] = hash(s)
	}
	return out
}

func main() {
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	var v vectors
	if err := json.Unmarshal(data, &v); err != nil {
		fail("%v", err)
	}
	verifier, err := note.NewVerifier(v.Vkey)
	if err != nil {
		fail("verifier key: %v", err)
	}
	n, err := note.Open([]byte(v.Checkpoint), note.VerifierList(verifier))
	if err != nil {
		fail("checkpoint does not verify: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != verifier.Name() {
		fail("checkpoint body malformed: %q", n.Text)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("checkpoint size: %v", err)
	}
	rootBytes, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(rootBytes) != tlog.HashSize {
		fail("checkpoint root malformed")
	}
	var root tlog.Hash
	copy(root[:], rootBytes)

	// A checkpoint with one changed byte must not verify.
	edited := []byte(v.Checkpoint)
	edited[len(verifier.Name())+1] ^= 1
	if _, err := note.Open(edited, note.VerifierList(verifier)); err == nil {
		fail("an edited checkpoint verified")
	}

	for _, p := range v.Inclusion {
		entry, err := base64.StdEncoding.DecodeString(p.EntryBase64)
		if err != nil {
			fail("entry %d: %v", p.Index, err)
		}
		leaf := tlog.RecordHash(entry)
		if leaf != hash(p.LeafHash) {
			fail("entry %d: leaf hash differs from Go's RecordHash", p.Index)
		}
		if p.Size == size && hash(p.Root) != root {
			fail("entry %d: proof root differs from the checkpoint's", p.Index)
		}
		if err := tlog.CheckRecord(hashes(p.Proof), p.Size, hash(p.Root), p.Index, leaf); err != nil {
			fail("inclusion of %d in %d: %v", p.Index, p.Size, err)
		}
		wrong := leaf
		wrong[0] ^= 1
		if tlog.CheckRecord(hashes(p.Proof), p.Size, hash(p.Root), p.Index, wrong) == nil {
			fail("inclusion of %d: a wrong leaf verified", p.Index)
		}
	}
	for _, p := range v.Consistency {
		if p.NewSize == size && hash(p.NewRoot) != root {
			fail("consistency %d→%d: root differs from the checkpoint's", p.OldSize, p.NewSize)
		}
		if err := tlog.CheckTree(hashes(p.Proof), p.NewSize, hash(p.NewRoot), p.OldSize, hash(p.OldRoot)); err != nil {
			fail("consistency %d→%d: %v", p.OldSize, p.NewSize, err)
		}
		wrong := hash(p.OldRoot)
		wrong[0] ^= 1
		if tlog.CheckTree(hashes(p.Proof), p.NewSize, hash(p.NewRoot), p.OldSize, wrong) == nil {
			fail("consistency %d→%d: a wrong old root verified", p.OldSize, p.NewSize)
		}
	}
	fmt.Printf("go: checkpoint of size %d verified; %d inclusion and %d consistency proofs verified\n",
		size, len(v.Inclusion), len(v.Consistency))
}

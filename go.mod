module github.com/ckpt-dev/ckpt

go 1.26.8

require golang.org/x/sys v0.49.0

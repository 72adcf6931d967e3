"""Views of the KHEOPS stand-in, by topic: `api` (the protocol), `pages` (album page),
`control` (the loopback-only `/_sandbox/` test API)."""

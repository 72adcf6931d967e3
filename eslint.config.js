// ESLint (flat config) for our own browser scripts: `make lint` runs it.
// They are classic scripts (a <script src> each, no bundler), run by current browsers.
// The OHIF bundle (var/) and the installed tools (node_modules/) are not ours to lint.
"use strict";

const js = require("@eslint/js");
const globals = require("globals");

module.exports = [
  { ignores: ["var/", "staticfiles/", "node_modules/", ".venv/", "artifacts/"] },
  {
    files: ["static/launcher/**/*.js"],
    ...js.configs.recommended,
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "script",
      globals: { ...globals.browser },
    },
    linterOptions: { reportUnusedDisableDirectives: "error" },
  },
  {
    files: ["eslint.config.js"],
    ...js.configs.recommended,
    languageOptions: { sourceType: "commonjs", globals: { ...globals.node } },
  },
];

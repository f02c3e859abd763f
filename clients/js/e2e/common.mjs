// What the end-to-end scripts share: launching Debian's Chromium (never a browser
// Playwright would download) and encoding a RESP command for the control port.
import { chromium } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

// Headless Chromium with the flags this machine needs: no sandbox (root), and no
// background networking, whose connections the closed network refuses. On failure
// `fail` is called with the reason (it exits the script).
export async function launchChromium(fail) {
  try {
    return await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
  } catch (e) {
    return fail(`cannot launch ${CHROMIUM} (scripts/test.sh installs Debian's chromium): ${e.message}`);
  }
}

// One command as a RESP array of bulk strings.
export const resp = (parts) => `*${parts.length}\r\n` + parts.map((p) => `$${Buffer.byteLength(p)}\r\n${p}\r\n`).join('');

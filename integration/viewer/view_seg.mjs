// Open a study in the OHIF viewer (prebuilt @ohif/app dist/) served next to a
// DICOMweb proxy to Orthanc, load its DICOM-SEG the way a radiologist does, and
// record what the viewer shows. Driven by integration/test_viewer.py, which
// makes the assertions (this script only observes and reports).
//
//   node view_seg.mjs <json-args>
//
// json-args (one JSON object):
//   ohifDist     folder of OHIF's built dist/ (index.html, app bundles)
//   dicomweb     DICOMweb root of Orthanc, e.g. http://127.0.0.1:8042/dicom-web
//   study        Study Instance UID (0020,000D) to open
//   outDir       where screenshots and report.json are written
//   chromium     browser executable (default /usr/bin/chromium)
//   waitMs       upper bound of every wait, ms (default 240000)
//   planarSr     optional: regex of the planar measurement report's SeriesDescription;
//                after the SEG, open that SR too (OHIF jumps to the measurement's image)
//
// Output (outDir): before-seg.png, after-seg.png (full page, 1280x800 CSS px at
// device scale 1, so screenshot pixels = CSS px), report.json:
//   { viewport: {x, y, width, height}   the active viewport's box in screenshot px
//     overlayBefore, overlayAfter       its bottom-right overlay text, e.g. "I: 159 (1/80)"
//     segmentNames: [..]                row titles of the segmentation panel
//     segThumbnails: n, consoleErrors: [..], steps: [..],
//     with planarSr (a SeriesDescription pattern): srThumbnails, srThumbnailTexts,
//     planarBodyText (the page's text after opening that SR), overlayPlanar, viewportPlanar }
// and planar-sr.png (the viewport after double-clicking the planar SR's thumbnail).
// Exit status 0 when every step ran, 1 otherwise (report.json has the error).
//
// One origin serves OHIF's files, a generated app-config.js (one DICOMweb data
// source at <origin>/dicom-web) and proxies /dicom-web/* to Orthanc, so the
// browser needs no CORS. Unknown paths fall back to index.html (OHIF routes on
// the client: /viewer?StudyInstanceUIDs=...).

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { chromium } from 'playwright-core';

const args = JSON.parse(process.argv[2] ?? '{}');
for (const k of ['ohifDist', 'dicomweb', 'study', 'outDir']) {
  if (!args[k]) {
    console.error(`view_seg.mjs: missing "${k}" in the JSON argument`);
    process.exit(2);
  }
}
const WAIT = args.waitMs ?? 240000;
const dist = path.resolve(args.ohifDist);
const upstream = new URL(args.dicomweb.replace(/\/+$/, ''));
fs.mkdirSync(args.outDir, { recursive: true });

const report = { steps: [], consoleErrors: [], segmentNames: [], segThumbnails: 0, viewport: null };
const step = (s) => {
  report.steps.push(s);
  console.log(`[view_seg] ${new Date().toISOString()} ${s}`);
};

// OHIF's DICOMweb data source pointed at this origin (OHIF config docs,
// "Data Source Configuration"; options as the issue prescribes for Orthanc).
const APP_CONFIG = `window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'orthanc',
  investigationalUseDialog: { option: 'never' },
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (myonode test)',
      name: 'orthanc',
      qidoRoot: window.location.origin + '/dicom-web',
      wadoRoot: window.location.origin + '/dicom-web',
      wadoUriRoot: window.location.origin + '/dicom-web',
      qidoSupportsIncludeField: false,
      supportsReject: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      staticWado: false,
      singlepart: 'bulkdata,video',
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
};
`;

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.css': 'text/css', '.json': 'application/json', '.wasm': 'application/wasm', '.svg': 'image/svg+xml',
  '.png': 'image/png', '.ico': 'image/x-icon', '.woff': 'font/woff', '.woff2': 'font/woff2', '.ttf': 'font/ttf',
  '.map': 'application/json', '.txt': 'text/plain',
};

function proxy(req, res) {
  const target = new URL(upstream.pathname + req.url.slice('/dicom-web'.length), upstream);
  const headers = { ...req.headers, host: upstream.host };
  const up = http.request(target, { method: req.method, headers }, (ur) => {
    res.writeHead(ur.statusCode, ur.headers);
    ur.pipe(res);
  });
  up.on('error', (e) => {
    res.writeHead(502, { 'content-type': 'text/plain' });
    res.end(`proxy to ${target}: ${e.message}`);
  });
  req.pipe(up);
}

function serveFile(req, res) {
  const urlPath = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  if (urlPath === '/app-config.js') {
    res.writeHead(200, { 'content-type': 'text/javascript', 'cache-control': 'no-store' });
    return res.end(APP_CONFIG);
  }
  let file = path.join(dist, path.normalize(urlPath));
  if (!file.startsWith(dist + path.sep) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    file = path.join(dist, 'index.html'); // SPA fallback: client-side routes
  }
  res.writeHead(200, {
    'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
    // SharedArrayBuffer for the image decoders' workers.
    'cross-origin-opener-policy': 'same-origin',
    'cross-origin-embedder-policy': 'require-corp',
  });
  fs.createReadStream(file).pipe(res);
}

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/dicom-web/') || req.url === '/dicom-web') proxy(req, res);
  else serveFile(req, res);
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const origin = `http://127.0.0.1:${server.address().port}`;
step(`serving ${dist} and proxying /dicom-web to ${upstream} at ${origin}`);

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'myonode-chromium-'));
let context;
let failed = null;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: args.chromium ?? '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 800 },
    deviceScaleFactor: 1,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
    ],
  });
  context.setDefaultTimeout(WAIT);
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => {
    if (m.type() === 'error') report.consoleErrors.push(m.text().slice(0, 500));
  });
  page.on('pageerror', (e) => report.consoleErrors.push(`pageerror: ${String(e).slice(0, 500)}`));

  // No guided tour (OHIF remembers a finished tour in localStorage).
  await page.addInitScript(() => {
    try {
      for (const k of ['viewer', 'basic-viewer', 'longitudinal', 'segmentation']) {
        localStorage.setItem(`showOnboarding-${k}`, 'false');
      }
    } catch (e) { /* storage unavailable: the tour is dismissed by clicks below */ }
  });

  const url = `${origin}/viewer?StudyInstanceUIDs=${encodeURIComponent(args.study)}`;
  step(`open ${url}`);
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  await page.locator('canvas').first().waitFor({ state: 'visible' });
  step('canvas visible');
  await dismissOverlays(page);

  // Series thumbnails; the SEG has a modality label "SEG".
  const thumbs = page.locator('[data-cy="study-browser-thumbnail"], [data-cy="study-browser-thumbnail-no-image"]');
  await thumbs.first().waitFor({ state: 'visible' });
  const segThumb = thumbs.filter({ has: page.locator('[data-cy="series-modality-label"]', { hasText: /^\s*SEG\s*$/ }) });
  await segThumb.first().waitFor({ state: 'visible' });
  report.segThumbnails = await segThumb.count();
  step(`${await thumbs.count()} thumbnails, ${report.segThumbnails} SEG`);

  // The image viewport has rendered when the overlay shows the instance number.
  await waitForImage(page);
  await dismissOverlays(page);
  report.viewport = await viewportBox(page);
  report.overlayBefore = await overlayText(page);
  await page.screenshot({ path: path.join(args.outDir, 'before-seg.png') });
  step('screenshot before-seg.png');

  await segThumb.first().dblclick();
  step('double-clicked the SEG thumbnail');
  const yes = page.getByRole('button', { name: /^\s*Yes\s*$/ });
  await yes.first().waitFor({ state: 'visible' });
  await yes.first().click();
  step('answered Yes to "open this Segmentation?"');

  const rows = page.locator('[data-cy="data-row-title"]');
  await openSegmentationPanel(page, rows);
  await rows.first().waitFor({ state: 'visible' });
  // Let the labelmap render (hydration then a render pass): wait for network idle.
  await page.waitForLoadState('networkidle').catch(() => {});
  await page.waitForTimeout(3000);
  await dismissOverlays(page);
  report.segmentNames = (await rows.allInnerTexts()).map((t) => t.trim()).filter(Boolean);
  step(`segmentation panel rows: ${JSON.stringify(report.segmentNames)}`);
  report.viewport = await viewportBox(page);
  report.overlayAfter = await overlayText(page);
  await page.screenshot({ path: path.join(args.outDir, 'after-seg.png') });
  step('screenshot after-seg.png');

  if (args.planarSr) {
    // The planar measurement report (TID 1410 polylines + Area): open its SR thumbnail the
    // way a radiologist does and record what the measurement panel / viewport say.
    const srThumb = thumbs.filter({ has: page.locator('[data-cy="series-modality-label"]', { hasText: /^\s*SR\s*$/ }) });
    report.srThumbnails = await srThumb.count();
    report.srThumbnailTexts = (await srThumb.allInnerTexts()).map((t) => t.replace(/\s+/g, ' ').trim());
    step(`${report.srThumbnails} SR thumbnails: ${JSON.stringify(report.srThumbnailTexts)}`);
    const planar = srThumb.filter({ hasText: new RegExp(args.planarSr) });
    await planar.first().waitFor({ state: 'visible' });
    await planar.first().dblclick();
    step('double-clicked the planar SR thumbnail');
    await page.waitForLoadState('networkidle').catch(() => {});
    // The measurement is drawn once OHIF has hydrated the SR and jumped to its image: wait
    // for its "Area: <value>" label (bounded by WAIT), then one more render pass.
    // OHIF sometimes draws the SR's annotations only at the next render of the viewport:
    // hover it and step one image away and back (arrow keys) until the label is there.
    const hasLabel = () => page.evaluate(() => /Area:\s*[0-9]/.test(document.body.innerText || ''));
    const vp = await viewportBox(page);
    for (let attempt = 0; attempt < 20 && !(await hasLabel()); attempt++) {
      if (vp) await page.mouse.move(vp.x + vp.width / 2 + attempt, vp.y + vp.height / 2);
      await page.waitForTimeout(1000);
      if (await hasLabel()) break;
      await page.keyboard.press('ArrowDown');
      await page.waitForTimeout(500);
      await page.keyboard.press('ArrowUp');
      await page.waitForTimeout(1000);
    }
    step((await hasLabel()) ? 'planar measurement label shown' : 'no "Area:" label after re-renders');
    await page.waitForTimeout(2000);
    report.planarButtons = (await page.getByRole('button').allInnerTexts()).map((t) => t.trim()).filter(Boolean).slice(0, 60);
    report.planarBodyText = (await page.locator('body').innerText()).replace(/\s+/g, ' ').slice(0, 4000);
    report.overlayPlanar = await overlayText(page);
    report.viewportPlanar = await viewportBox(page);
    await page.screenshot({ path: path.join(args.outDir, 'planar-sr.png') });
    step('screenshot planar-sr.png');
  }
} catch (e) {
  failed = String(e?.stack ?? e);
  report.error = failed;
  try {
    report.dataCy = await context.pages()[0].evaluate(() =>
      [...document.querySelectorAll('[data-cy]')].map((e) => e.getAttribute('data-cy')));
  } catch { /* best effort */ }
  try {
    const pages = context?.pages() ?? [];
    if (pages.length) await pages[0].screenshot({ path: path.join(args.outDir, 'failure.png') });
  } catch { /* best effort */ }
} finally {
  fs.writeFileSync(path.join(args.outDir, 'report.json'), JSON.stringify(report, null, 2));
  await context?.close().catch(() => {});
  server.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
if (failed) {
  console.error(`[view_seg] failed: ${failed}`);
  process.exit(1);
}
process.exit(0);

// Close the guided tour (Shepherd) and the investigational-use banner if shown.
async function dismissOverlays(page) {
  const candidates = [
    page.locator('.shepherd-cancel-icon'),
    page.getByRole('button', { name: /^\s*(Skip( all)?|Close|Got it|Confirm and Hide)\s*$/i }),
  ];
  for (const c of candidates) {
    for (let i = 0; i < (await c.count()); i++) {
      const el = c.nth(i);
      if (await el.isVisible().catch(() => false)) {
        await el.click({ timeout: 5000 }).catch(() => {});
        step('dismissed an overlay');
      }
    }
  }
}

// Show the right side panel's segmentation tab (collapsed at start in the basic viewer).
async function openSegmentationPanel(page, rows) {
  if (await rows.first().isVisible().catch(() => false)) return;
  const header = page.locator('[data-cy="side-panel-header-right"]');
  if (await header.isVisible().catch(() => false)) {
    await header.click();
    step('opened the right side panel');
  }
  const tab = page.locator('[data-cy="panelSegmentation-btn"], [data-cy="panelSegmentationWithTools-btn"]');
  if (!(await rows.first().isVisible().catch(() => false)) && (await tab.first().isVisible().catch(() => false))) {
    await tab.first().click();
    step('selected the segmentation tab');
  }
}

// Wait until the viewport's overlay reports an image (e.g. "I: 40 (40/80)"), then for network idle.
async function waitForImage(page) {
  await page.waitForFunction(() => {
    const el = document.querySelector('[data-cy="viewport-overlay-bottom-right"]');
    return el && /\(\s*\d+\s*\/\s*\d+\s*\)/.test(el.textContent || '');
  }, null, { timeout: WAIT });
  await page.waitForLoadState('networkidle').catch(() => {});
  step('image overlay shown');
}

// Text of the viewport's bottom-right overlay: "I: <InstanceNumber> (<slice>/<slices>)".
async function overlayText(page) {
  const el = page.locator('[data-cy="viewport-overlay-bottom-right"]').first();
  return (await el.isVisible().catch(() => false)) ? (await el.innerText()).trim() : '';
}

// Bounding box of the largest visible canvas (the image viewport), CSS px = screenshot px.
async function viewportBox(page) {
  return page.evaluate(() => {
    let best = null;
    for (const c of document.querySelectorAll('canvas')) {
      const r = c.getBoundingClientRect();
      if (r.width * r.height > (best ? best.width * best.height : 0)) {
        best = { x: Math.round(r.x), y: Math.round(r.y), width: Math.round(r.width), height: Math.round(r.height) };
      }
    }
    return best;
  });
}

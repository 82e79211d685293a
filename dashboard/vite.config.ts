/// <reference types="vitest/config" />
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// `npm run dev` serves the page with hot reload and forwards the server's endpoints to a
// lockstep-server (or scripts/mock-server.mjs) on LOCKSTEP_DEV_TARGET, default 127.0.0.1:8001.
const target = process.env.LOCKSTEP_DEV_TARGET ?? 'http://127.0.0.1:8001';

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // uPlot + React are ~250 KB minified; one chunk is fine for a dashboard served locally.
    chunkSizeWarningLimit: 600,
  },
  server: {
    proxy: {
      '/ws': { target, ws: true },
      '/api': target,
      '/logger': target,
      '/status': target,
      '/docs': target,
    },
  },
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node',
  },
});

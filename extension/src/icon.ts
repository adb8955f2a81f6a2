import { LabIcon } from '@jupyterlab/ui-components';

const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <rect x="3" y="3" width="7" height="7" rx="1.5"/>
    <rect x="14" y="3" width="7" height="7" rx="1.5"/>
    <rect x="3" y="14" width="7" height="7" rx="1.5"/>
    <path d="M17.5 13.5v8M13.5 17.5h8" stroke="#616161" stroke-width="2" fill="none"/>
  </g>
</svg>`;

/** The workbench's icon: building blocks with one being added. */
export const workbenchIcon = new LabIcon({ name: 'adapter-workbench:icon', svgstr: svg });

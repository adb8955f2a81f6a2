/**
 * The "Adapter Hub" sidebar: search with the Hub panel's filters, a results list, details with the load code,
 * and buttons to insert that code into the active notebook cell or copy it.
 */
import { Clipboard } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { IAdapter, IQuery, searchAdapters } from './api';
import { workbenchIcon } from './icon';

/** Where the load code goes: the active notebook cell, if there is one (returns false when there is none). */
export type InsertCode = (code: string) => boolean;

const FILTERS: { key: keyof IQuery; label: string; choices?: [string, string][]; placeholder?: string }[] = [
  { key: 'source', label: 'Source', choices: [['', 'both'], ['hf', 'Hugging Face Hub'], ['ah', 'AdapterHub archive']] },
  { key: 'model', label: 'Model', placeholder: 'e.g. bert-base-uncased' },
  { key: 'task', label: 'Task', placeholder: 'e.g. sentiment' },
  { key: 'method', label: 'Method', placeholder: 'e.g. seq_bn, lora' },
  { key: 'library', label: 'Library', choices: [['all', 'all'], ['adapters', 'adapters'], ['peft', 'peft']] },
  {
    key: 'sort',
    label: 'Sort',
    choices: [['downloads', 'downloads'], ['likes', 'likes'], ['recency', 'recency']]
  }
];

export class HubSidebar extends Widget {
  constructor(insertCode: InsertCode) {
    super();
    this.insertCode = insertCode;
    this.id = 'adapter-workbench-hub';
    this.title.icon = workbenchIcon;
    this.title.caption = 'Adapter Hub';
    this.addClass('wb-ext-sidebar');

    const form = document.createElement('form');
    form.className = 'wb-ext-search';
    this.searchInput = input('search', 'Search adapters (text)');
    this.searchInput.setAttribute('aria-label', 'Search text');
    form.appendChild(this.searchInput);
    for (const filter of FILTERS) {
      const field = filter.choices ? select(filter.choices) : input('text', filter.placeholder ?? '');
      field.classList.add(`wb-ext-filter-${filter.key}`);
      field.setAttribute('aria-label', filter.label);
      this.filters[filter.key] = field;
      const label = document.createElement('label');
      label.textContent = filter.label;
      label.appendChild(field);
      form.appendChild(label);
    }
    const button = document.createElement('button');
    button.type = 'submit';
    button.className = 'wb-ext-search-button jp-mod-styled jp-mod-accept';
    button.textContent = 'Search';
    form.appendChild(button);
    form.addEventListener('submit', event => {
      event.preventDefault();
      void this.search();
    });

    this.status.className = 'wb-ext-status';
    this.results.className = 'wb-ext-results';
    this.details.className = 'wb-ext-details';
    const heading = document.createElement('h2');
    heading.textContent = 'Adapter Hub';
    this.node.append(heading, form, this.status, this.results, this.details);
  }

  /** Run the search in the form and show the results. */
  async search(): Promise<void> {
    const query: IQuery = { q: this.searchInput.value, source: '', model: '', task: '', method: '', library: '', sort: '' };
    for (const [key, field] of Object.entries(this.filters)) {
      query[key as keyof IQuery] = field.value.trim();
    }
    this.setStatus('Searching…');
    this.results.replaceChildren();
    this.details.replaceChildren();
    try {
      const found = await searchAdapters(query);
      const shown = found.items.length < found.total ? ` (showing ${found.items.length})` : '';
      this.setStatus(`${found.total} adapter${found.total === 1 ? '' : 's'} found${shown}`, found.notice);
      for (const adapter of found.items) {
        this.results.appendChild(this.resultItem(adapter));
      }
    } catch (error) {
      this.setStatus(`Search failed: ${(error as Error).message}`, null, true);
    }
  }

  private resultItem(adapter: IAdapter): HTMLElement {
    const item = document.createElement('li');
    item.className = 'wb-ext-result';
    item.tabIndex = 0;
    item.dataset.adapterId = adapter.adapter_id;
    const name = document.createElement('div');
    name.className = 'wb-ext-result-id';
    name.textContent = adapter.adapter_id;
    const facts = document.createElement('div');
    facts.className = 'wb-ext-result-facts';
    facts.textContent = [adapter.method, adapter.task, adapter.library, `${adapter.downloads ?? 0} downloads`]
      .filter(Boolean)
      .join(' · ');
    item.append(name, facts);
    const choose = () => {
      this.results.querySelectorAll('.wb-ext-selected').forEach(el => el.classList.remove('wb-ext-selected'));
      item.classList.add('wb-ext-selected');
      this.showDetails(adapter);
    };
    item.addEventListener('click', choose);
    item.addEventListener('keydown', event => event.key === 'Enter' && choose());
    return item;
  }

  private showDetails(adapter: IAdapter): void {
    const rows: [string, string][] = [
      ['id', adapter.adapter_id],
      ['model', adapter.model_name ?? '–'],
      ['task', [adapter.task, adapter.subtask].filter(Boolean).join('/') || '–'],
      ['method', adapter.method ?? '–'],
      ['library', adapter.library],
      ['source', adapter.source === 'ah' ? 'AdapterHub archive' : 'Hugging Face Hub'],
      ['downloads', String(adapter.downloads ?? '–')],
      ['likes', String(adapter.likes ?? '–')],
      ['tags', adapter.tags.join(', ') || '–']
    ];
    const table = document.createElement('table');
    for (const [key, value] of rows) {
      const row = table.insertRow();
      row.insertCell().textContent = key;
      row.insertCell().textContent = value;
    }
    const code = document.createElement('pre');
    code.className = 'wb-ext-load-code';
    code.textContent = adapter.load_code;
    const insert = actionButton('Insert into cell', 'wb-ext-insert', () => {
      if (this.insertCode(adapter.load_code)) {
        this.setStatus(`Inserted the load code of ${adapter.adapter_id} into the active cell`);
      } else {
        this.setStatus('Open a notebook and select a cell to insert the code into', null, true);
      }
    });
    const copy = actionButton('Copy', 'wb-ext-copy', () => {
      Clipboard.copyToSystem(adapter.load_code);
      this.setStatus('Load code copied');
    });
    const buttons = document.createElement('div');
    buttons.className = 'wb-ext-buttons';
    buttons.append(insert, copy);
    this.details.replaceChildren(table, code, buttons);
  }

  private setStatus(message: string, notice: string | null = null, isError = false): void {
    this.status.textContent = notice ? `${message}. ${notice}` : message;
    this.status.classList.toggle('wb-ext-error', isError);
  }

  private insertCode: InsertCode;
  private searchInput: HTMLInputElement;
  private filters: Record<string, HTMLInputElement | HTMLSelectElement> = {};
  private status = document.createElement('div');
  private results = document.createElement('ul');
  private details = document.createElement('div');
}

function input(type: string, placeholder: string): HTMLInputElement {
  const field = document.createElement('input');
  field.type = type;
  field.placeholder = placeholder;
  field.maxLength = 200;
  field.className = 'jp-mod-styled';
  return field;
}

function select(choices: [string, string][]): HTMLSelectElement {
  const field = document.createElement('select');
  field.className = 'jp-mod-styled';
  for (const [value, text] of choices) {
    field.add(new Option(text, value));
  }
  return field;
}

function actionButton(text: string, className: string, onClick: () => void): HTMLButtonElement {
  const button = document.createElement('button');
  button.className = `${className} jp-mod-styled`;
  button.textContent = text;
  button.addEventListener('click', onClick);
  return button;
}

/**
 * Calls to the server extension's routes (`/adapter-workbench/...`), authenticated like every Jupyter request.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** One adapter as the server describes it (AdapterHub's field names, plus the code that loads it). */
export interface IAdapter {
  source: string;
  adapter_id: string;
  model_name: string | null;
  task: string | null;
  subtask: string | null;
  method: string | null;
  library: string;
  downloads: number | null;
  likes: number | null;
  last_modified: string | null;
  size_bytes: number | null;
  tags: string[];
  adapter_config: Record<string, unknown> | null;
  load_code: string;
}

export interface ISearchResults {
  total: number;
  page: number;
  pages: number;
  notice: string | null;
  items: IAdapter[];
}

/** The sidebar's filters, the same as the notebook Hub panel's; empty values mean "any". */
export interface IQuery {
  q: string;
  source: string;
  model: string;
  task: string;
  method: string;
  library: string;
  sort: string;
}

/** GET `endpoint` with `params`; throws an Error carrying the server's message on any failure. */
export async function requestAPI<T>(endpoint: string, params: Record<string, string>): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const query = new URLSearchParams(Object.entries(params).filter(([, value]) => value !== ''));
  const url = URLExt.join(settings.baseUrl, 'adapter-workbench', endpoint) + '?' + query.toString();
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, {}, settings);
  } catch (error) {
    throw new Error(`The Jupyter server could not be reached: ${error}`);
  }
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && (data.error || data.message);
    throw new Error(message || `${response.status} ${response.statusText}`);
  }
  return data as T;
}

export function searchAdapters(query: IQuery, limit = 50): Promise<ISearchResults> {
  return requestAPI<ISearchResults>('search', { ...query, limit: String(limit) });
}
